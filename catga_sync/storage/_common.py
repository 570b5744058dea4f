"""What every storage shares: argument checks, the shape rules of a persist, and the messages.

The rules are the ones :class:`~catga_sync.storage.base.Storage` documents; memory and SQL
storages apply them the same way, so a bug in a driver fails loudly in both instead of leaving a
log that cannot be read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError, StorageError
from ..raft import Entry, HardState, PersistedState, Snapshot

MAX_NODE_ID_LENGTH = 255
"""A node id must fit the ``node_id`` column (VARCHAR(255))."""


def check_node_id(node_id: object) -> str:
    """Return ``node_id`` when it can name a node's state; raise :class:`ConfigError` if not."""
    if not isinstance(node_id, str) or not node_id:
        raise ConfigError(f"node_id must be a non-empty string, got {node_id!r}")
    if len(node_id) > MAX_NODE_ID_LENGTH:
        raise ConfigError(
            f"node_id {node_id[:40]!r}... is {len(node_id)} characters long; "
            f"use at most {MAX_NODE_ID_LENGTH}"
        )
    if any(ord(ch) < 32 or ord(ch) == 0x7F for ch in node_id):
        raise ConfigError(f"node_id {node_id!r} contains control characters; use a plain name")
    return node_id


@dataclass(slots=True)
class LogBounds:
    """Where a node's stored log starts and ends: ``offset`` (the snapshot's index) < entries ≤
    ``last_index``. Kept beside the stored state so a persist can be checked before it is run."""

    offset: int = 0
    last_index: int = 0

    @classmethod
    def of(cls, state: PersistedState) -> LogBounds:
        offset = state.snapshot.meta.index if state.snapshot else 0
        return cls(offset, offset + len(state.entries))

    def after(
        self, snapshot: Snapshot | None, entries: Sequence[Entry], snapshot_replaces_log: bool
    ) -> LogBounds:
        """The bounds once a persist is applied; raises :class:`StorageError` for a persist
        that would leave a gap or rewrite compacted entries (a driver bug, stored nothing)."""
        offset, last = self.offset, self.last_index
        if snapshot is not None:
            offset = snapshot.meta.index
            last = offset if snapshot_replaces_log else max(last, offset)
        if entries:
            first = entries[0].index
            if not offset < first <= last + 1:
                raise StorageError(
                    f"refusing to store entries from index {first}: the stored log holds "
                    f"{offset + 1}..{last} after a snapshot at {offset}, so they would leave a "
                    "gap or overwrite compacted entries. Nothing was written; this is a bug in "
                    "the code driving the Raft core"
                )
            for k, entry in enumerate(entries):
                if entry.index != first + k:
                    raise StorageError(
                        f"refusing to store entries that are not consecutive: entry {k} has "
                        f"index {entry.index}, expected {first + k}. Nothing was written"
                    )
            last = entries[-1].index
        return LogBounds(offset, last)


def check_loaded(state: PersistedState, where: str, node_id: str, recovery: str) -> None:
    """Raise :class:`StorageError` when a loaded state cannot be the one we stored."""
    offset = state.snapshot.meta.index if state.snapshot else 0
    for k, entry in enumerate(state.entries):
        if entry.index != offset + 1 + k:
            raise StorageError(
                f"the Raft state of node {node_id!r} in {where} is damaged: stored entry {k} "
                f"has index {entry.index}, expected {offset + 1 + k} (the log must follow its "
                f"snapshot at {offset} without gaps).\n{recovery}"
            )
    last = offset + len(state.entries)
    hard: HardState = state.hard_state
    if hard.commit > last:
        raise StorageError(
            f"the Raft state of node {node_id!r} in {where} is damaged: its commit index "
            f"{hard.commit} is beyond its last stored entry {last}.\n{recovery}"
        )


def recovery_steps(what: str, delete: str) -> str:
    """The guide's "State Corruption" steps, made concrete for one node's state.

    ``what`` names the state ("this node's state file /data/node0.sqlite3"), ``delete`` says how
    to remove it.
    """
    return (
        "To recover (the 'State Corruption' steps of the guide):\n"
        "  1. Stop all nodes.\n"
        "  2. Back up the state directories (or databases) of every node.\n"
        f"  3. Delete {what}: {delete}\n"
        "  4. Restart the other nodes first and wait until they have a leader, then restart "
        "this one: it rejoins and syncs its log from the leader. Repair one node at a time, "
        "and let it catch up before touching another.\n"
        "  5. If every node's state is damaged, restore all of them from the backup."
    )
