"""What the Raft loop writes to its storage, and when: each Ready's entries, votes and
snapshots before anything leaves, a commit index on its own later, and the same write again
while the database server is unreachable.

Only the Raft loop's thread calls :class:`Persister`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import StorageUnavailableError
from ..raft import Entry, HardState, Membership, Ready, Snapshot
from ..storage.base import Storage
from .eventlog import SlowWrites
from .status import NodeStats

__all__ = ["Persister"]

log = logging.getLogger("catga_sync.node")


class Persister:
    """Writes Readies to ``storage`` for the loop of node ``node_id``.

    ``hard_state`` is what the storage holds at start; ``published(None)`` is called when
    :attr:`storage_unavailable` changes; ``stopping`` set ends the retries of an unreachable
    server; a synced write slower than ``slow_seconds`` is logged (:class:`SlowWrites`).
    """

    def __init__(
        self,
        node_id: str,
        storage: Storage,
        stats: NodeStats,
        *,
        hard_state: HardState,
        slow_seconds: float,
        published: Callable[[Membership | None], None],
        stopping: threading.Event,
    ) -> None:
        self.node_id = node_id
        self._storage = storage
        self._stats = stats
        self._written = hard_state
        self._commit_pending: HardState | None = None
        self._slow_writes = SlowWrites(node_id, slow_seconds)
        self._published = published
        self._stopping = stopping
        self.storage_unavailable: str | None = None
        """Why the database is unreachable while a write waits for it (None: it is not)."""

    def persist(self, ready: Ready) -> None:
        """Write ``ready``'s entries, snapshot and term or vote, synced, before its messages
        leave. A Ready whose only durable change is the commit index is not written here but
        by :meth:`write_commit`, after the batch.

        Raft keeps the commit index volatile (a restarted node learns it again from the
        leader), so it is written without flushing it to disk (:meth:`Storage.persist` with
        ``sync=False``), once per batch of the loop, after the callers were answered and the
        open peer requests replied to: off the path of every command, and one write for every
        commit of the batch. It still survives a crash of the process (``kill -9``) once the
        batch ends, so a restarted node serves its local reads from the state it had; a power
        loss, or a crash within the batch, may roll it back, which Raft allows.
        """
        hard = ready.hard_state
        written = self._written
        changed = hard if hard is not None and hard != written else None
        if not ready.entries and ready.snapshot is None:
            if changed is None:
                return
            if (changed.term, changed.vote) == (written.term, written.vote):
                self._commit_pending = changed
                return
        self._write(
            changed,
            entries=ready.entries,
            snapshot=ready.snapshot,
            snapshot_replaces_log=ready.apply_snapshot,
            sync=True,
        )

    def write_commit(self, *, stopping: bool = False) -> None:
        """Write the commit index that :meth:`persist` left for after the batch, unsynced.
        ``stopping``: the node stops; a database out of reach then costs only this write (the
        leader tells the commit index again), not a failed stop."""
        pending = self._commit_pending
        if pending is None:
            return
        self._stats.commit_only_writes_unsynced += 1
        try:
            self._write(pending, sync=False)
        except StorageUnavailableError:
            if not stopping:
                raise
            log.debug("node %s: last commit index not written on stop", self.node_id)

    def _write(
        self,
        hard_state: HardState | None,
        *,
        sync: bool,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
        snapshot_replaces_log: bool = False,
    ) -> None:
        started = time.monotonic()
        self._write_until_reachable(
            hard_state=hard_state,
            entries=entries,
            snapshot=snapshot,
            snapshot_replaces_log=snapshot_replaces_log,
            sync=sync,
        )
        if hard_state is not None:
            self._written = hard_state
            self._commit_pending = None  # the newest hard state holds the newest commit index
        took = time.monotonic() - started
        if sync:
            self._stats.persist_latency_seconds.observe(took)
        if took >= self._slow_writes.threshold and not self.storage_unavailable:
            self._slow_writes.note(took)

    def _write_until_reachable(self, **write: Any) -> None:
        """Persist; while the database server is unreachable, retry the same write (it is
        idempotent: the same entries, hard state and snapshot again) instead of failing the
        node, so a restart of the server does not stop every node that uses it. Meanwhile the
        loop sends nothing (nothing leaves before the disk has it) and the status says so.
        Any other failure — a full disk, an I/O error, a failed fsync — is never retried: it
        stops the node (retrying a failed fsync proves nothing)."""
        pause = 0.05
        while True:
            try:
                self._storage.persist(**write)
            except StorageUnavailableError as exc:
                if not self.storage_unavailable:
                    self.storage_unavailable = str(exc)
                    log.error(
                        "node %s: storage unavailable, not acknowledging until it is back: %s",
                        self.node_id,
                        exc,
                    )
                    self._published(None)
                if self._stopping.wait(pause):
                    raise
                pause = min(pause * 2, 1.0)
                continue
            if self.storage_unavailable:
                self.storage_unavailable = None
                log.warning("node %s: storage is back; the node goes on", self.node_id)
                self._published(None)
            return
