"""Calling replicated state machines from any node: ``orders = cluster.state(Orders)``.

The handles live in :mod:`catga_sync.runtime.state` (the engine serves them); this module keeps
the old import path.
"""

from __future__ import annotations

from .runtime.state import (
    OUTSTANDING_GRACE,
    ClientSession,
    LocalQueries,
    StateHandle,
    parse_request_id,
    request_id,
    run_command,
)

__all__ = [
    "OUTSTANDING_GRACE",
    "ClientSession",
    "LocalQueries",
    "StateHandle",
    "parse_request_id",
    "request_id",
    "run_command",
]
