"""What the fault harness records of a run, and what the checkers read: client operations on the
example's orders (:class:`Op`), lock grants (:class:`Grant`) and the OutboxProcessor's starts
(:class:`TaskStart`). Plain frozen records, no behaviour: the harness writes them, the checkers in
``checkers.py`` and ``linearizability.py`` judge them.

Times are ``time.monotonic()`` of the one machine that runs every client, so they compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Grant", "Op", "TaskStart"]


@dataclass(frozen=True)
class Op:
    """One client operation on one order (key) of the example's OrderSystem.

    Outputs: create -> ``{"version": 1, "status": "created"}``; read -> ``{"found": False}`` or
    ``{"found": True, "version": int, "status": str}``; cas -> ``{"ok": True, "version": int,
    "status": str}`` (the order after the write: version = expected_version + 1), or
    ``{"ok": False, "current_version": int}`` (a version conflict, which is also a read of the
    version), or ``{"ok": False, "not_found": True}``. Definite failures that change nothing (no
    leader, refused) are left out of the history by the recorder.
    """

    process: int
    """The client; one client has at most one op in flight."""
    f: str
    """``"create"``, ``"read"`` or ``"cas"``."""
    key: str
    """The order id."""
    value: Mapping[str, Any] | None
    """cas: ``{"expected_version": int, "status": str}``; else None."""
    output: Mapping[str, Any] | None
    """The answer (above); None when :attr:`complete` is None."""
    invoke: float
    """``time.monotonic()`` just before the request was sent."""
    complete: float | None
    """``time.monotonic()`` when the answer arrived; None = indeterminate (a timeout, a reset
    connection): the op may have taken effect at any time after :attr:`invoke`, or never."""


@dataclass(frozen=True)
class Grant:
    """A lock grant the client received (``POST /locks/<name>`` answered 200)."""

    lock: str
    owner: str
    token: int
    """The fencing token."""
    ttl: float
    """Seconds asked for; the lease frees itself ttl after the grant."""
    invoke: float
    complete: float
    release_invoke: float | None
    """When the owner started releasing it (None: never released)."""


@dataclass(frozen=True)
class TaskStart:
    """One ``OutboxProcessor started on the leader (fencing token N)`` line of a node's log."""

    node: str
    token: int
