"""Work on a stopped node's state: seed an empty storage from a backup (``catga restore``) and
give a SQLite file's free space back to the file system (``catga compact``).

Both take the node's ownership lock first (:mod:`~catga_sync.storage.ownership`), so they
refuse a running node with the usual "already running" error instead of writing under it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, StorageError
from ..raft import HardState, Membership, Snapshot, SnapshotMeta
from .base import Storage
from .ownership import FileOwnership
from .sql import SqlStorage
from .sqlite import SQLITE_BUSY_TIMEOUT_MS

__all__ = ["Compacted", "compact_sqlite", "seed_storage", "sqlite_size"]


def seed_storage(storage: Storage, snapshot: Snapshot, membership: Membership) -> Snapshot:
    """Write ``snapshot`` into ``storage``, which must hold no state for its node, as the
    node's snapshot with ``membership`` in force (the new cluster's members), and a hard state
    at its term with no vote and everything committed. Returns the snapshot written.

    Raises :class:`StorageError` when the storage already holds state (nothing is written) or
    when the node runs (its ownership lock is taken)."""
    meta = SnapshotMeta(snapshot.meta.index, snapshot.meta.term, membership)
    seeded = Snapshot(meta, snapshot.data)
    state = storage.open()
    try:
        if state.snapshot is not None or state.entries or state.hard_state != HardState():
            last = state.snapshot.meta.index if state.snapshot else 0
            raise StorageError(
                f"refusing to restore node {storage.node_id!r} into {storage.describe()}: it "
                f"already holds Raft state (term {state.hard_state.term}, log up to index "
                f"{last + len(state.entries)}); restore only into an empty state directory "
                "or database (restore every node of a new cluster from the backup; never one "
                "node of a running cluster: with its old term forgotten it could vote twice in a "
                "term)"
            )
        storage.persist(
            hard_state=HardState(seeded.meta.term, None, seeded.meta.index),
            entries=(),
            snapshot=seeded,
            snapshot_replaces_log=True,
        )
    finally:
        storage.close()
    return seeded


@dataclass(frozen=True, slots=True)
class Compacted:
    """One SQLite file compacted: its path and its size (file plus WAL) before and after."""

    path: Path
    before: int
    after: int


def sqlite_size(path: Path) -> int:
    """The bytes a SQLite database takes: the file and its write-ahead log."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += part.stat().st_size
    return total


def compact_sqlite(storage: SqlStorage) -> Compacted:
    """``VACUUM`` a stopped node's SQLite file: rewrite it without its free pages, and switch it
    to ``auto_vacuum=INCREMENTAL`` so that from then on the running node gives the space back
    after every snapshot by itself. Holds the node's lock meanwhile; raises StorageError when
    the node runs, the file is missing, or SQLite refuses."""
    path, lock = storage.sqlite_path, storage.lock_path
    if path is None or lock is None:
        raise ConfigError(
            f"{storage.describe()} is not a SQLite file: only SQLite state is compacted this "
            "way (PostgreSQL's autovacuum and MySQL's InnoDB reuse the space by themselves)"
        )
    if not path.is_file():
        raise StorageError(
            f"node {storage.node_id!r} has no state file {path}: check --state and --node-id"
        )
    ownership = FileOwnership.acquire(lock, node_id=storage.node_id, where=str(path))
    try:
        before = sqlite_size(path)
        try:
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise StorageError(
                f"could not compact {path}: {exc}; it is unchanged (VACUUM writes a copy first: "
                "check free disk space, about the file's size)"
            ) from exc
        return Compacted(path, before, sqlite_size(path))
    finally:
        ownership.release()
