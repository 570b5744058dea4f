"""Backups: a consistent snapshot of the replicated state, taken on the leader.

A part of :class:`~catga_sync.runtime.node.RaftNode` (a mixin, like
:mod:`~catga_sync.runtime.membership`). The leader first passes a read barrier (it confirms
with a quorum that it still leads, and applies everything committed before the call), then
takes the snapshot on the Raft loop, between two batches, as log compaction does: every state
machine, the client sessions and the lock table, as of the last applied entry, with that
entry's index and term and the membership in force there. Any other node fetches it from the
leader (``GET {url_prefix}/admin/snapshot``) and checks its checksum before handing it on.
The document it becomes is :mod:`catga_sync.storage.backup`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..config_values import Duration
from ..errors import UsageError
from ..fsm import ReplicatedState
from ..raft import RaftCore, Role, Snapshot, SnapshotMeta
from ..storage.backup import read_backup

__all__ = ["NodeBackup"]

log = logging.getLogger("catga_sync.node")

T = TypeVar("T")
R = TypeVar("R")


class NodeBackup:
    """The backup call of a running node (see the module docstring)."""

    node_id: str
    state_machines: ReplicatedState
    _applier: Callable[..., Any] | None

    # Provided by NodeCalls / NodeMembership.
    def _call(self, fn: Callable[[RaftCore], T], timeout: float) -> T:
        raise NotImplementedError

    def read_barrier(self, *, timeout: Duration | None = None) -> int:
        raise NotImplementedError

    def _on_leader(
        self,
        here: Callable[[float], R | None],
        answered: Callable[[dict[str, Any]], R],
        method: str,
        route: str,
        body: dict[str, Any] | None,
        timeout: float | None,
        forward: bool,
    ) -> R:
        raise NotImplementedError

    def backup_snapshot(self, *, timeout: float | None = None, forward: bool = True) -> Snapshot:
        """A consistent snapshot of the whole replicated state, for a backup: taken on the
        leader after a read barrier, so it holds every command committed before the call.
        A follower fetches it from the leader (``forward=False``: raise NotLeaderError).

        Raises UsageError on a node whose state is not its state machines (a custom applier),
        NoLeaderError or CommitTimeoutError when no leader answers in time."""
        if self._applier is not None:
            raise UsageError(
                f"node {self.node_id} applies entries with its own applier: its state is not "
                "in catga_sync's state machines, so there is no snapshot to back up"
            )

        def take(core: RaftCore) -> Snapshot | None:
            if core.role is not Role.LEADER:
                return None  # leadership moved since the barrier: ask the new leader
            index = core.applied_index
            term = core.log.term(index) or 0
            meta = SnapshotMeta(index, term, core.membership_at(index))
            return Snapshot(meta, self.state_machines.snapshot())

        def here(deadline: float) -> Snapshot | None:
            self.read_barrier(timeout=max(0.0, deadline - time.monotonic()))
            snapshot = self._call(take, max(0.0, deadline - time.monotonic()))
            if snapshot is not None:
                log.info(
                    "node %s: took a backup snapshot at index %d, term %d (%d bytes)",
                    self.node_id,
                    snapshot.meta.index,
                    snapshot.meta.term,
                    len(snapshot.data),
                )
            return snapshot

        def answered(answer: dict[str, Any]) -> Snapshot:
            return read_backup(answer, "the leader's snapshot")

        return self._on_leader(here, answered, "GET", "snapshot", None, timeout, forward)
