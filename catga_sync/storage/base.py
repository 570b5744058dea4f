"""The storage port: where a node keeps its Raft state between restarts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..raft import Entry, HardState, PersistedState, Ready, Snapshot


class Storage(Protocol):
    """A node's durable Raft state: hard state, log entries and the latest snapshot.

    One storage belongs to one node (``node_id``) and one process: :meth:`open` takes an
    ownership lock and fails with :class:`~catga_sync.errors.StorageError` when another process
    holds it. Every method raises ``StorageError`` (naming the database and what to do) on
    failure; none of them retries.
    """

    node_id: str

    def open(self) -> PersistedState:
        """Take the ownership lock, create or check the schema, and load the state."""
        ...

    def persist(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        snapshot_replaces_log: bool,
        sync: bool = True,
    ) -> None:
        """Make one Ready's state durable, atomically (one transaction), in this order:

        1. ``snapshot``: replace the stored snapshot, and delete every stored entry at or below
           its index — every stored entry when ``snapshot_replaces_log``;
        2. ``entries``: delete every stored entry from ``entries[0].index`` on, then insert them;
        3. ``hard_state``: replace the stored hard state.

        ``sync=False`` (a new commit index alone, which Raft may forget) may skip the flush to
        stable storage: the write must still survive this process crashing, and may be lost
        with a power loss or an operating-system crash.
        """
        ...

    def close(self) -> None:
        """Release the ownership lock and every connection. Idempotent."""
        ...

    def describe(self) -> str:
        """Where the state lives, for messages (a file path or a URL without password)."""
        ...


def persist_ready(storage: Storage, ready: Ready) -> None:
    """Persist what a :class:`~catga_sync.raft.Ready` asks for (nothing when it asks none)."""
    if ready.must_persist:
        storage.persist(
            hard_state=ready.hard_state,
            entries=ready.entries,
            snapshot=ready.snapshot,
            snapshot_replaces_log=ready.apply_snapshot,
        )
