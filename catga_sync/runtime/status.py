"""What a node tells the world: its status, a snapshot safe to read from any thread, and the
counters of its Raft loop (each extension keeps counters of its own, the same way)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..raft import RaftCore, Role
from ..raft.events import CampaignStarted, ElectionWon
from .measures import Histogram, LabeledCounters, LabeledHistograms, histogram, labeled_counter

__all__ = ["NodeStats", "NodeStatus", "StatusBoard", "count_events", "counter", "counters_of"]

log = logging.getLogger("catga_sync.node")

StatusListener = Callable[["NodeStatus", "NodeStatus"], None]
"""``listener(old, new)``, called on the Raft loop after the status changed."""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A consistent snapshot of what the node knows, safe to read from any thread."""

    node_id: str
    raft_id: str
    role: Role
    term: int
    leader_raft_id: str | None
    leader_id: str | None
    commit_index: int
    commit_term: int
    """The term of the entry at the commit index: equal to ``term`` once a leader has
    committed its own no-op (before that it cannot serve linearizable reads)."""
    last_applied: int
    members: tuple[str, ...]
    running: bool
    storage_problem: str | None = None
    """Why the node's database is unreachable, while a write waits for it (None: it is not).
    The node acknowledges nothing meanwhile."""
    learners: tuple[str, ...] = ()
    """The non-voting members: they receive the log and do not vote (``members`` are the
    voters)."""
    membership: str = "voter"
    """This node's place in the cluster: ``voter``, ``learner``, ``joining`` (started in join
    mode and not added yet) or ``removed`` (it no longer votes or campaigns)."""

    @property
    def is_leader(self) -> bool:
        return self.running and self.role is Role.LEADER

    @property
    def leading_term(self) -> int | None:
        """The term this node leads in, or None when it does not lead (the fencing token of
        leader-only work)."""
        return self.term if self.is_leader else None

    @property
    def leader_endpoint(self) -> str | None:
        return self.leader_raft_id


def counter(help_text: str) -> Any:
    """A counter field of a stats dataclass: it starts at 0, and ``help_text`` is the help of
    its metric (``catga_<field name>_total``). One table, so a counter cannot be counted and
    never exported."""
    return field(default=0, metadata={"help": help_text})


def counters_of(stats: object) -> list[tuple[str, str, int]]:
    """``(name, help, value)`` of every :func:`counter` field of the dataclass ``stats``."""
    return [
        (f.name, f.metadata["help"], getattr(stats, f.name))
        for f in dataclasses.fields(stats)  # type: ignore[arg-type]
        if "help" in f.metadata and "kind" not in f.metadata
    ]


@dataclass
class NodeStats:
    """Counters of the Raft loop (exported as metrics)."""

    ticks: int = counter("Raft ticks run")
    late_ticks: int = counter("Ticks that ran late because the tick job or the loop was delayed")
    skipped_jobs: int = counter("Tick jobs APScheduler skipped or missed")
    elections: int = counter("Elections this node started as a candidate")
    elections_started: int = counter("Elections (after a won pre-vote, or a transfer) started")
    elections_won: int = counter("Elections this node won: terms it became the leader of")
    pre_vote_rounds: int = counter("Pre-vote rounds this node started (thesis 9.6)")
    leader_changes: int = counter("Times this node saw a new leader")
    readies: int = counter("Batches of Raft work handled (one storage transaction each)")
    snapshots: int = counter("Snapshots of the replicated state taken to compact the log")
    entries_persisted: int = counter("Log entries written to storage")
    bytes_persisted: int = counter("Bytes of log entry data written to storage")
    commit_only_writes_unsynced: int = counter(
        "Readies whose only durable change, the commit index, was written without an fsync"
    )
    inline_replies: int = counter("Messages answered in the response to a peer's request")
    commit_notices_parked: int = counter("Commit notices held back for an AppendEntries to carry")
    commit_notices_saved: int = counter(
        "Held-back commit notices made redundant by an AppendEntries"
    )
    messages_sent: int = counter("Raft messages handed to the transport")
    messages_received: int = counter("Raft messages received from peers")
    invalid_messages: int = counter("Peer messages the core refused")
    heartbeats_sent: LabeledCounters = labeled_counter(
        "Replication RPCs (heartbeats, AppendEntries) attempted by this leader, per peer", "peer"
    )
    heartbeat_failures: LabeledCounters = labeled_counter(
        "Replication RPCs of this leader that failed (no answer, refused), per peer", "peer"
    )
    peer_rpc_latency_seconds: LabeledHistograms = histogram(
        "Latency of each RPC (POST) to a peer", "peer"
    )
    commit_latency_seconds: Histogram = histogram(
        "Proposal to applied on the leader: queueing, fsync, replication to a quorum, apply"
    )
    persist_latency_seconds: Histogram = histogram(
        "Synced storage writes of the Raft loop (entries, votes, snapshots), fsync included"
    )


def count_events(stats: NodeStats, events: tuple[object, ...]) -> None:
    """Count the elections in a Ready's events (none in a steady cluster)."""
    for event in events:
        if isinstance(event, CampaignStarted):
            if event.pre_vote:
                stats.pre_vote_rounds += 1
            else:
                stats.elections_started += 1
        elif isinstance(event, ElectionWon):
            stats.elections_won += 1


class StatusBoard:
    """The node's latest :class:`NodeStatus`, the threads waiting on it, and its listeners.

    The Raft loop publishes, and the node's own start and stop; publishing is serialized.
    Anyone may read or wait; a thread waiting in :meth:`wait_for` when a change comes wakes
    after the listeners have run.
    """

    def __init__(self, initial: NodeStatus, stats: NodeStats, *, joining: bool = False) -> None:
        self.status = initial
        self._stats = stats
        self._joining = joining
        """Started in join mode and never a member yet: not in the membership means waiting
        to be added, not removed."""
        self._changed = threading.Condition()
        self._publishing = threading.RLock()
        self._listeners: list[StatusListener] = []

    def add_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def publish_core(
        self,
        core: RaftCore,
        name_of: Callable[[str | None], str | None],
        running: bool,
        storage_problem: str | None = None,
    ) -> None:
        """Publish what ``core`` knows now. A node that is not running leads nothing and knows
        no leader, whatever its core last believed (a stopped leader must not look like one)."""
        soft = core.soft_state
        leader = soft.leader_id if running else None
        self.publish(
            NodeStatus(
                node_id=self.status.node_id,
                raft_id=self.status.raft_id,
                role=soft.role if running else Role.FOLLOWER,
                term=soft.term,
                leader_raft_id=leader,
                leader_id=name_of(leader),
                commit_index=core.commit_index,
                commit_term=core.log.term(core.commit_index) or 0,
                last_applied=core.applied_index,
                members=tuple(sorted(core.membership.voters)),
                running=running,
                storage_problem=storage_problem,
                learners=tuple(sorted(core.membership.learners)),
                membership=self._place(core),
            )
        )

    def _place(self, core: RaftCore) -> str:
        if core.id in core.membership.voters:
            self._joining = False
            return "voter"
        if core.id in core.membership.learners:
            self._joining = False
            return "learner"
        return "joining" if self._joining else "removed"

    def publish_running(self, running: bool) -> None:
        status = self.status
        if not running:
            status = dataclasses.replace(
                status, role=Role.FOLLOWER, leader_raft_id=None, leader_id=None
            )
        self.publish(dataclasses.replace(status, running=running))

    def publish(self, new: NodeStatus) -> None:
        # One publisher at a time (the loop, or the node stopping while its loop still runs):
        # listeners see every change once, in order, never a stale status after a newer one.
        with self._publishing:
            old = self.status
            if new == old:
                return
            if new.leader_raft_id != old.leader_raft_id and new.leader_raft_id is not None:
                self._stats.leader_changes += 1
            if new.role is Role.CANDIDATE and old.role is not Role.CANDIDATE:
                self._stats.elections += 1
            if new.membership != old.membership:
                _log_place(new)
            with self._changed:
                self.status = new
            for listener in list(self._listeners):
                try:
                    listener(old, new)
                except Exception:
                    log.exception("status listener %r failed", listener)
            # After the listeners: a thread already waiting for this change sees their work.
            with self._changed:
                self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[NodeStatus], bool], timeout: float, node_id: str
    ) -> NodeStatus:
        """Block until ``predicate(status)`` holds; raises TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.status):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"node {node_id}: condition not met in {timeout}s")
                self._changed.wait(remaining)
            return self.status


def _log_place(status: NodeStatus) -> None:
    """Say in the log when this node joins, is promoted or is removed: an operator watching
    one node's log sees why it stopped (or started) voting."""
    node, place = status.node_id, status.membership
    if place == "removed":
        log.warning(
            "node %s was removed from the cluster (voters: %s): it no longer votes or "
            "campaigns and never disrupts the others; stop it, or add it again "
            "(catga members add %s)",
            node,
            ", ".join(status.members) or "none known",
            status.raft_id,
        )
    elif place == "joining":
        log.info(
            "node %s is in join mode: it waits to be added (catga members add %s)",
            node,
            status.raft_id,
        )
    else:
        log.info("node %s is now a %s of the cluster", node, place)
