"""A replicated key-value map: the built-in state machine, handy for small shared settings,
feature flags, leases of your own, counters."""

from __future__ import annotations

from typing import Any

from .fsm import StateMachine, command, query


class ReplicatedDict(StateMachine):
    """A JSON key-value map replicated through the Raft log.

    Register it (``node.register(ReplicatedDict())``) and use it through a handle:
    ``kv = node.state(ReplicatedDict)``; ``kv.set("k", 1)``, ``kv.get("k")``.
    """

    name = "catga.kv"

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @command
    def set(self, key: str, value: Any) -> Any:
        """Store ``value`` under ``key``; returns the previous value (or None)."""
        _check_key(key)
        previous = self.data.get(key)
        self.data[key] = value
        return previous

    @command
    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there."""
        _check_key(key)
        return self.data.pop(key, _MISSING) is not _MISSING

    @command
    def compare_and_set(self, key: str, expected: Any, value: Any) -> bool:
        """Store ``value`` only if ``key`` holds ``expected`` (None: absent); True if stored."""
        _check_key(key)
        if self.data.get(key) != expected:
            return False
        self.data[key] = value
        return True

    @command
    def increment(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the integer under ``key`` (0 when absent); returns the new value."""
        _check_key(key)
        current = self.data.get(key, 0)
        if not isinstance(current, int) or isinstance(current, bool):
            raise TypeError(f"{key!r} holds {type(current).__name__}, not an integer")
        self.data[key] = current + by
        return current + by

    @query
    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @query
    def items(self) -> dict[str, Any]:
        return dict(self.data)

    @query
    def size(self) -> int:
        return len(self.data)


_MISSING = object()


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a key must be a non-empty string, not {key!r}")
