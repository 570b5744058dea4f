"""The ``catga`` command line: operate a running cluster over its admin routes.

One module per job: :mod:`.client` (the HTTP admin client, trying each given node in turn),
:mod:`.status`, :mod:`.members`, :mod:`.transfer`, :mod:`.snapshot` (back up), :mod:`.restore`
and :mod:`.compact` (offline, on a stopped node's state), :mod:`.serve` (run a node), :mod:`.main`
(the ``catga`` / ``python -m catga_sync`` parser) and :mod:`.flask_cli` (the same commands as
``flask cluster``). A new command is a module with a ``add_parser(sub)`` function and a
line in :mod:`.main`. Only ``serve`` starts a node; ``restore`` and ``compact`` open a
stopped node's state; the others talk to running ones.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
