"""``python -m catga_sync``: the ``catga`` command line (:mod:`catga_sync.cli`): ``serve``
runs a node; ``status``, ``members``, ``transfer-leader`` and ``snapshot save`` operate a
running cluster; ``restore`` and ``compact`` work on a stopped node's state."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli.main import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    return _main(argv, prog="python -m catga_sync")


if __name__ == "__main__":
    sys.exit(main())
