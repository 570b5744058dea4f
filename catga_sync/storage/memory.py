"""The in-memory twin of the SQL storage: the same rules, nothing on disk.

What the guide calls in-memory state (``PersistentStatePath`` unset): fast, and lost when the
process exits, so a restarted node rejoins with an empty log and no memory of its votes. Use it
for tests and for throwaway clusters; use a directory or a database URL for anything else.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import StorageError
from ..raft import Entry, HardState, PersistedState, Snapshot
from ._common import LogBounds, check_node_id

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Keeps one node's Raft state in this process, surviving :meth:`close` and a new
    :meth:`open` on the same object (not the process). Needs no ownership lock."""

    def __init__(self, node_id: str) -> None:
        self.node_id = check_node_id(node_id)
        self._hard = HardState()
        self._snapshot: Snapshot | None = None
        self._entries: list[Entry] = []
        self._bounds = LogBounds()
        self._open = False
        self._mutex = threading.Lock()

    def open(self) -> PersistedState:
        with self._mutex:
            if self._open:
                raise StorageError(
                    f"the storage of node {self.node_id!r} is already open; close it first"
                )
            self._open = True
            return PersistedState(self._hard, self._snapshot, tuple(self._entries))

    def persist(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        snapshot_replaces_log: bool,
        sync: bool = True,
    ) -> None:
        with self._mutex:
            if not self._open:
                raise StorageError(
                    f"the storage of node {self.node_id!r} is not open; call open() first"
                )
            bounds = self._bounds.after(snapshot, entries, snapshot_replaces_log)
            # The checks above raise before anything changes, so a refused persist stores
            # nothing, as a rolled-back transaction would.
            if snapshot is not None:
                if snapshot_replaces_log:
                    self._entries = []
                else:
                    self._entries = [e for e in self._entries if e.index > snapshot.meta.index]
                self._snapshot = snapshot
            if entries:
                first = entries[0].index
                self._entries = [e for e in self._entries if e.index < first]
                self._entries.extend(entries)
            if hard_state is not None:
                self._hard = hard_state
            self._bounds = bounds

    def close(self) -> None:
        with self._mutex:
            self._open = False

    def describe(self) -> str:
        return f"memory of process (node {self.node_id!r}; lost when the process exits)"
