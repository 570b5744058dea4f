"""The outcomes of forwarded commands by idempotency key: a built-in replicated state machine.

The leader records here what a forwarded command gave (its result or its error) under the
command's idempotency key, so that a retry of the same key — after a lost answer, a timeout or
a leader change — gets the first outcome back instead of running the handler again, whichever
node leads by then. Entries expire by entry time (:attr:`StateMachine.now`), so the table stays
as large as the traffic of one ``ttl``. Pure and deterministic, like every state machine.
"""

from __future__ import annotations

from typing import Any

from .fsm import StateMachine, command, query

DEFAULT_TTL = 3600.0
"""Seconds an outcome is remembered (by the time of the entry that recorded it)."""


class IdempotencyTable(StateMachine):
    """``record(key, outcome)`` once per key; ``get(key)`` the recorded entry.

    Registered automatically on every node given a mediator (``CatgaCluster(app,
    mediator=...)``, ``ClusterNode(config, mediator=...)``); register your own instance before
    start to choose another ``ttl`` — the same on every node.
    """

    name = "catga.idempotency"

    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        self._ttl = float(ttl)
        self.entries: dict[str, dict[str, Any]] = {}
        """key -> {"outcome": {...}, "fingerprint": str | None, "t": entry time}, oldest first."""

    @command
    def record(self, key: str, outcome: dict[str, Any], fingerprint: str | None = None) -> Any:
        """Remember ``outcome`` (``Outcome.to_json()``) under ``key`` unless the key is already
        recorded; returns the entry that stands (the first one wins)."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"an idempotency key must be a non-empty string, not {key!r}")
        if not isinstance(outcome, dict):
            raise TypeError(f"an outcome must be a JSON object, not {type(outcome).__name__}")
        self._expire()
        entry = self.entries.get(key)
        if entry is None:
            entry = {"outcome": outcome, "fingerprint": fingerprint, "t": self.now}
            self.entries[key] = entry
        return entry

    @query
    def get(self, key: str) -> dict[str, Any] | None:
        """The entry recorded under ``key`` (``outcome``, ``fingerprint``, ``t``), or None."""
        return self.entries.get(key)

    @query
    def size(self) -> int:
        return len(self.entries)

    def restore(self, state: Any) -> None:
        # Snapshots are written with sorted keys: put the entries back in entry-time order.
        entries = dict(state.get("entries", {}))
        self.entries = dict(sorted(entries.items(), key=lambda item: float(item[1]["t"])))

    def _expire(self) -> None:
        # Entries are inserted in entry-time order (``now`` never goes backwards), so the
        # expired ones are at the front: stop at the first one still fresh.
        horizon = self.now - self._ttl
        while self.entries:
            oldest = next(iter(self.entries))
            if self.entries[oldest]["t"] >= horizon:
                break
            del self.entries[oldest]
