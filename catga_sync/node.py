"""A running Raft node: the pure core, driven by one thread, with storage, transport and timers.

This is the only module of catga_sync that starts threads. One *Raft loop* thread owns the
:class:`~catga_sync.raft.RaftCore`; everything else (peer RPC handlers, the APScheduler tick
job, callers of :meth:`ClusterNode.propose`) talks to it through a queue. For every batch of
work the loop does, in this order and only this order:

    **persist** the hard state and entries, **then send** the messages,
    **then apply** committed entries, **then advance** the core.

so that no vote and no acknowledgement leaves before the disk has it (the Ready contract,
:class:`~catga_sync.raft.Ready`). Leader replication traffic may leave before the persist.

Time: the core counts ticks (10 ms by default). The loop runs every tick that elapsed on the
monotonic clock after each batch and sleeps on its queue until the next tick is due, so a late
wake-up costs no time. An APScheduler interval job (``max_instances=1``, ``coalesce=True``, no
misfire drop) wakes it every heartbeat interval as well: the heartbeat pacemaker, which keeps
heartbeats going should the loop's own timer be starved. APScheduler does not drive every
10 ms tick itself because, measured here, a 10 ms job costs 4.2% of a core in an idle process
(a timed queue wait: 0.6%) and skips runs under load. Late ticks and skipped job runs are
counted in :attr:`ClusterNode.stats`, never logged one by one.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import random
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from .config import ClusterConfig
from .errors import (
    CatgaError,
    CommitTimeoutError,
    ForwardingError,
    NoLeaderError,
    NotLeaderError,
    ProposalDroppedError,
    StorageError,
)
from .fsm import Outcome, ReplicatedState, StateMachine
from .idempotency import IdempotencyTable
from .jobs import JobRuns
from .raft import (
    AppendEntries,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    RaftCore,
    Ready,
    Role,
)
from .state import ClientSession
from .storage import open_storage
from .storage.base import Storage
from .transport.base import Transport
from .transport.proposals import ProposalClient

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler
    from werkzeug.serving import BaseWSGIServer

    from .coordinator import ClusterCoordinator
    from .mediator import Mediator
    from .state import StateHandle

log = logging.getLogger("catga_sync.node")

T = TypeVar("T")
M = TypeVar("M", bound=StateMachine)

_TICK = object()
_RETRYABLE = (NotLeaderError, ProposalDroppedError, ForwardingError, CommitTimeoutError)
_STOP = object()
COMMIT_NOTICE_DELAY = 0.002
"""Seconds a leader holds a commit notice back, waiting for an AppendEntries to carry it."""


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


@dataclass
class NodeStats:
    """Counters of the Raft loop (exported as metrics)."""

    ticks: int = 0
    late_ticks: int = 0
    """Ticks that were due but ran late (the tick job or the loop was delayed)."""
    skipped_jobs: int = 0
    """Tick jobs APScheduler skipped or missed (counted instead of logged)."""
    elections: int = 0
    leader_changes: int = 0
    readies: int = 0
    snapshots: int = 0
    entries_persisted: int = 0
    bytes_persisted: int = 0
    commit_only_writes_unsynced: int = 0
    """Readies whose only durable change was the commit index: written without an fsync."""
    commit_notices_parked: int = 0
    """Commit notices (AppendEntries without entries) held back for a moment."""
    commit_notices_saved: int = 0
    """Held-back commit notices made redundant by an AppendEntries that carried the commit."""
    inline_replies: int = 0
    """Messages answered in the response to a peer's request instead of a request of ours."""
    messages_sent: int = 0
    messages_received: int = 0
    invalid_messages: int = 0
    singleton_task_starts: int = 0
    """Singleton task runs started on this node (:mod:`catga_sync.singleton`)."""
    singleton_task_stops: int = 0
    """Singleton task runs that ended (told to stop, returned or raised)."""
    singleton_task_restarts: int = 0
    """Singleton task runs started again after the previous run raised."""
    singleton_task_failures: int = 0
    """Singleton task runs that raised."""
    singleton_task_stuck: int = 0
    """Singleton task runs still going ``stop_timeout`` after they were told to stop."""
    leader_job_runs: int = 0
    """Leader-gated job runs started on this node (:mod:`catga_sync.jobs`)."""
    leader_job_misses: int = 0
    """Due fire times of gated jobs not run on their own (coalesced, too late, or leadership
    not confirmed)."""
    leader_job_failures: int = 0
    """Gated job runs that raised."""
    leader_job_skips: int = 0
    """Gated job fires skipped because the log shows that fire time already completed."""


@dataclass(slots=True)
class _Waiter:
    term: int
    future: Future[Any]
    origin: str | None = None


@dataclass(slots=True)
class _ReadWaiter:
    future: Future[int]
    index: int = -1


@dataclass
class _Call:
    fn: Callable[[RaftCore], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class _Proposal:
    """A command for the log. The loop appends every proposal it drains in one go
    (``propose_many``): one entry batch, one AppendEntries per follower, one fsync."""

    data: bytes
    origin: str | None = None
    future: Future[tuple[int, Future[Any]]] = field(default_factory=Future)


@dataclass
class _ReplySlot:
    """An open peer request waiting for its answer: while it is open, what the loop sends to
    ``peer`` goes back in that request's response instead of a new request (one HTTP exchange
    per round trip, not two)."""

    peer: str
    messages: Sequence[Message]
    replies: list[Message] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False


class ClusterNode:
    """One member of a catga_sync cluster.

    In a Flask app, :class:`~catga_sync.web.CatgaCluster` creates and starts it; in a worker
    process without Flask, ``ClusterNode(config).start()`` also serves the peer RPC from an
    embedded threaded HTTP server on the local endpoint's port.
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        scheduler: BaseScheduler | None = None,
        storage: Storage | None = None,
        transport: Transport | None = None,
        serve_http: bool = True,
        applier: Callable[[Entry], Any] | None = None,
        rng: random.Random | None = None,
        session_ttl: float = 3600.0,
        mediator: Mediator | None = None,
    ) -> None:
        self.config = config
        self.mediator = mediator
        """Runs commands forwarded to ``POST {url_prefix}/forward`` (the embedded server's)."""
        self.node_id = config.node_id
        self.raft_id = config.raft_id
        self.stats = NodeStats()
        self._scheduler = scheduler
        self._owns_scheduler = scheduler is None
        self._storage = storage
        self._transport = transport
        self._serve_http = serve_http
        self.state_machines = ReplicatedState(session_ttl=session_ttl)
        """The replicated state machines and client sessions (see :mod:`catga_sync.fsm`)."""
        self.state_machines.register(JobRuns())  # leader-gated jobs' last runs (jobs.py)
        self._applier = applier or self._apply_command
        self._custom_applier = applier is not None
        self._proposals: ProposalClient | None = None
        self._client = ClientSession(f"{config.node_id}-{uuid.uuid4().hex[:12]}")
        self._stopping_event = threading.Event()
        self._rng = rng or random.Random(hash((config.raft_id, os.getpid(), time.time_ns())))
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._core: RaftCore | None = None
        self._thread: threading.Thread | None = None
        self._server: BaseWSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._job_id = f"catga-tick-{self.node_id}-{id(self):x}"
        self._lifecycle = threading.Lock()
        self._started = False
        self._stopping = False
        self._stopped = False
        self._failure: BaseException | None = None
        self._pid = os.getpid()
        self._forked_from: int | None = None
        self._names: dict[str, str] = {self.raft_id: self.node_id}
        self._waiters: dict[int, _Waiter] = {}
        self._proposals_drained: list[_Proposal] = []
        self._reply_slots: dict[str, _ReplySlot] = {}
        self._parked: dict[str, tuple[AppendEntries, float]] = {}
        self._awaiting_commit: collections.Counter[str] = collections.Counter()
        """Followers with forwarded proposals not yet applied: their commit notices go now."""
        """Commit notices held back, by peer, with the time they must leave by."""
        self._slot_lock = threading.Lock()
        self._written_hard: HardState | None = None
        self._reads: dict[str, _ReadWaiter] = {}
        self._read_ids = itertools.count()
        self._tick_seconds = config.tick.total_seconds()
        self._tick_origin = 0.0
        self._ticks_done = 0
        self._status_changed = threading.Condition()
        self._status = self._initial_status()
        self._listeners: list[Callable[[NodeStatus, NodeStatus], None]] = []
        self._coordinator: ClusterCoordinator | None = None
        from .locks import install_lock_table  # the built-in lock table and its lease monitor

        install_lock_table(self)  # after _listeners: its monitor listens to leadership
        _track_fork(self)

    # ========================================================================================
    # Lifecycle

    def start(self) -> ClusterNode:
        """Open storage, start the Raft loop, the tick job and (without Flask) the server."""
        self._check_process()
        with self._lifecycle:
            if self._stopped or self._stopping:
                raise CatgaError(f"node {self.node_id} was stopped; create a new ClusterNode")
            if self._started:
                return self
            self._started = True
            try:
                self._start_locked()
            except BaseException:
                self._started = False
                self._release_resources()
                raise
        return self

    def _start_locked(self) -> None:
        config = self.config
        if config.switch_interval is not None and sys.getswitchinterval() > config.switch_interval:
            # Busy request threads hold the GIL for 5 ms slices by default; the tick job and
            # the Raft loop must get it back sooner or followers start elections (docs/node).
            sys.setswitchinterval(config.switch_interval)
        if self._storage is None:
            self._storage = open_storage(
                config.node_id,
                config.persistent_state_path,
                table_prefix=config.table_prefix,
                sqlite_synchronous=config.sqlite_synchronous,
            )
        if self.mediator is not None and IdempotencyTable.name not in self.state_machines.machines:
            self.state_machines.register(IdempotencyTable())  # forwarded commands' outcomes
        persisted = self._storage.open()
        self._written_hard = persisted.hard_state
        if persisted.snapshot is not None and not self._custom_applier:
            self.state_machines.restore(persisted.snapshot.data)
        self._core = RaftCore(config.raft_config(), rng=self._rng, persisted=persisted)
        if self._transport is None:
            from .transport.http import HttpTransport

            self._transport = HttpTransport(
                sender_id=self.raft_id,
                sender_name=self.node_id,
                peers=[m for m in self._core.membership.nodes if m != self.raft_id],
                secret=config.secret,
                url_prefix=config.url_prefix,
                timeout=max(config.election_timeout.total_seconds(), 0.1),
                max_batch_bytes=config.max_message_bytes,
                reply_receiver=self,
            )
        if self._serve_http:
            self._start_server()
        self._publish_status()
        self._tick_origin = time.monotonic()
        self._ticks_done = 0
        self._thread = threading.Thread(
            target=self._run, name=f"catga-raft-{self.node_id}", daemon=True
        )
        self._thread.start()
        self._start_tick_job()
        log.info(
            "node %s started at %s (term %d, %d members, state: %s)",
            self.node_id,
            self.raft_id,
            self._core.term,
            len(self._core.membership.voters),
            self._storage.describe(),
        )

    def stop(self, *, transfer: bool = True, timeout: float | None = None) -> None:
        """Stop the node. A leader first hands leadership to its most up-to-date follower, so
        the cluster does not wait an election timeout; then every thread, the scheduler job,
        sessions and storage are closed. Idempotent."""
        with self._lifecycle:
            if self._stopped or self._stopping:
                return
            self._stopping = True
            self._stopping_event.set()
        if transfer and self.running and self._forked_from is None:
            self._hand_off(timeout or 2 * self.config.election_timeout.total_seconds() + 0.5)
        with self._lifecycle:
            self._stopped = True
        self._release_resources()
        log.info("node %s stopped", self.node_id)

    def _hand_off(self, timeout: float) -> None:
        if not self._status.is_leader:
            return
        try:
            target = self._call(lambda core: core.most_up_to_date_voter(), timeout)
            if target is None:
                return
            self._call(lambda core: core.transfer_leadership(target), timeout)
        except CatgaError as exc:
            log.info("node %s: no leadership hand-off on stop: %s", self.node_id, exc)
            return
        deadline = time.monotonic() + timeout
        with self._status_changed:
            while self._status.is_leader and time.monotonic() < deadline:
                self._status_changed.wait(deadline - time.monotonic())
        if self._status.is_leader:
            log.warning(
                "node %s: leadership hand-off did not finish in %.2fs", self.node_id, timeout
            )
        else:
            log.info(
                "node %s handed leadership to %s", self.node_id, self._names.get(target, target)
            )

    def _release_resources(self) -> None:
        if self._scheduler is not None:
            try:
                if self._scheduler.get_job(self._job_id) is not None:
                    self._scheduler.remove_job(self._job_id)
                if self._owns_scheduler and self._scheduler.running:
                    self._scheduler.shutdown(wait=False)
            except Exception:  # the scheduler may already be shut down by its owner
                log.debug("scheduler cleanup failed", exc_info=True)
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            self._inbox.put(_STOP)
            thread.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._transport is not None:
            self._transport.close()
        if self._storage is not None:
            self._storage.close()
        self._fail_waiters(CatgaError(f"node {self.node_id} stopped"))
        self._publish_status(running=False)

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and self._failure is None

    def __enter__(self) -> ClusterNode:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ========================================================================================
    # What other threads call

    @property
    def status(self) -> NodeStatus:
        """The latest status (updated by the Raft loop after every batch)."""
        return self._status

    @property
    def transport(self) -> Transport | None:
        return self._transport

    @property
    def coordinator(self) -> ClusterCoordinator:
        """The guide's ``IClusterCoordinator``: who leads, and leadership events."""
        if self._coordinator is None:
            from .coordinator import ClusterCoordinator

            self._coordinator = ClusterCoordinator(self)
        return self._coordinator

    def add_status_listener(self, listener: Callable[[NodeStatus, NodeStatus], None]) -> None:
        """Call ``listener(old, new)`` on the Raft loop after the status changed. Keep it short
        and non-blocking (the coordinator hands events to its own thread)."""
        self._listeners.append(listener)

    def name_of(self, raft_id: str | None) -> str | None:
        """The human node id of a member, when known (learned from its requests)."""
        return None if raft_id is None else self._names.get(raft_id, raft_id)

    def receive(self, messages: Sequence[Message], sender_name: str | None) -> None:
        """Queue validated peer messages for the Raft loop (the PeerReceiver port)."""
        if sender_name and messages:
            self._names.setdefault(messages[0].frm, sender_name)
        for message in messages:
            self._inbox.put(message)

    def receive_and_reply(
        self, messages: Sequence[Message], sender_name: str | None, timeout: float
    ) -> list[Message]:
        """Queue ``messages`` and wait (up to ``timeout``) until the loop has handled them;
        return what it had to send to their sender meanwhile (the inline-reply PeerReceiver
        port). After the timeout the slot is abandoned and late replies go out as requests."""
        if not messages:
            return []
        if sender_name:
            self._names.setdefault(messages[0].frm, sender_name)
        slot = _ReplySlot(messages[0].frm, messages)
        self._inbox.put(slot)
        if not slot.done.wait(timeout):
            with self._slot_lock:
                slot.abandoned = True
                replies, slot.replies = slot.replies, []
            if replies and self._transport is not None:
                self._transport.send(replies)
            return []
        return slot.replies

    def register(self, machine: StateMachine) -> StateMachine:
        """Register a replicated state machine. Every node must register the same machines,
        before :meth:`start`, so that the log replays into them from the first entry."""
        if self._started:
            raise CatgaError(
                f"register state machine {type(machine).__name__} before starting node "
                f"{self.node_id}: entries replayed at start would otherwise miss it"
            )
        return self.state_machines.register(machine)

    def state(self, machine: type[M] | M, *, timeout: float | None = None) -> StateHandle[M]:
        """A handle to call the registered state machine ``machine`` (class or instance)."""
        from .state import StateHandle

        found = self._find_machine(machine)
        return StateHandle(self, found, self._client, timeout=timeout)

    def _find_machine(self, machine: Any) -> Any:
        for registered in self.state_machines.machines.values():
            if registered is machine or type(registered) is machine:
                return registered
        name = getattr(machine, "__name__", type(machine).__name__)
        raise CatgaError(
            f"state machine {name} is not registered on node {self.node_id}: register an "
            "instance with node.register(...) (or CatgaCluster(state_machines=[...])) before start"
        )

    def run_on_loop(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run ``fn()`` on the Raft loop, between two batches (state machines are consistent
        there), and return its result."""
        return self._call(lambda core: fn(), self._default_timeout(timeout))

    def propose(self, data: bytes, *, timeout: float | None = None) -> Any:
        """Append ``data`` to the log through this node (which must lead) and wait until it is
        applied here; returns what the applier returned for it.

        Raises :class:`~catga_sync.errors.NotLeaderError` on a follower, and
        :class:`~catga_sync.errors.CommitTimeoutError` when the entry is not applied in time
        (its outcome is then unknown).
        """
        return self.propose_indexed(data, timeout=timeout)[1]

    def propose_indexed(
        self, data: bytes, *, timeout: float | None = None, origin: str | None = None
    ) -> tuple[int, Any]:
        """Like :meth:`propose`, and also return the entry's log index. ``origin``: the Raft id
        of the follower that forwarded the proposal, which then learns of its commit at once
        (its caller waits until the follower applied it), not with the next AppendEntries."""
        timeout = self._default_timeout(timeout)
        deadline = time.monotonic() + timeout
        if not isinstance(data, bytes):
            raise TypeError(f"a proposal must be bytes, not {type(data).__name__}")
        proposal = _Proposal(data, origin)
        index, applied = self._on_loop(proposal, proposal.future, timeout)
        try:
            return index, applied.result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise CommitTimeoutError(
                f"the proposal was not applied within {timeout:.2f}s; its outcome is unknown. "
                "Retrying with the same request id is safe."
            ) from None

    def submit(self, data: bytes, *, timeout: float | None = None) -> Outcome:
        """Run a command entry (:func:`catga_sync.fsm.encode_command`) through the cluster from
        any node, and return its outcome once it is applied *on this node*.

        On the leader it is proposed here; on a follower it is forwarded to the leader. A lost
        answer, a leader change or a new election is retried with the same bytes — the same
        (client, seq) request id — until ``timeout``, so the command is applied at most once.
        Raises :class:`~catga_sync.errors.CommitTimeoutError` when its outcome is unknown.
        """
        timeout = self._default_timeout(timeout)
        deadline = time.monotonic() + timeout

        def attempt() -> Outcome:
            remaining = deadline - time.monotonic()
            if self._status.is_leader:
                return Outcome.coerce(self.propose_indexed(data, timeout=remaining)[1])
            leader = self._status.leader_endpoint
            if leader is None or leader == self.raft_id:
                raise NoLeaderError()
            index, outcome = self._proposal_client().forward(leader, data, remaining)
            self.wait_applied(index, max(0.0, deadline - time.monotonic()))
            return Outcome.from_json(outcome)

        try:
            return attempt()  # the common case, without building a Retrying per command
        except _RETRYABLE:
            self._stopping_event.wait(min(0.005, max(0.0, deadline - time.monotonic())))
        retrying = tenacity.Retrying(
            stop=tenacity.stop_when_event_set(self._stopping_event) | _stop_at(deadline),
            wait=tenacity.wait_exponential(multiplier=0.005, max=0.2)
            + tenacity.wait_random(0, 0.005),
            retry=tenacity.retry_if_exception_type(_RETRYABLE),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _RETRYABLE as exc:
            raise CommitTimeoutError(
                f"the command was not applied within {timeout:.2f}s ({exc}); its outcome is "
                "unknown. Retrying with the same request id is safe."
            ) from exc

    def _proposal_client(self) -> ProposalClient:
        if self._proposals is None:
            self._proposals = ProposalClient(
                sender_id=self.raft_id,
                sender_name=self.node_id,
                secret=self.config.secret,
                url_prefix=self.config.url_prefix,
                connect_timeout=max(self.config.election_timeout.total_seconds(), 0.1),
            )
        return self._proposals

    def read_barrier(self, *, timeout: float | None = None) -> int:
        """Wait until this node has applied everything committed before the call (a
        linearizable read point, thesis §6.4); returns that index.

        A read index request or its heartbeats can be lost (a dropped connection, a leader
        change), and the core never answers a lost read, so the request is asked again, as
        a new round, every two election timeouts until one is answered or ``timeout``.
        Raises NoLeaderError at once when no leader is known, CommitTimeoutError after
        ``timeout``."""
        timeout = self._default_timeout(timeout)
        deadline = time.monotonic() + timeout
        retry_every = max(2 * self.config.election_timeout.total_seconds(), 0.2)
        future: Future[int] = Future()
        contexts: list[str] = []

        def ask(core: RaftCore) -> None:
            context = f"{self.node_id}:{next(self._read_ids)}"
            contexts.append(context)
            self._reads[context] = _ReadWaiter(future)
            core.read_index(context)

        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommitTimeoutError(
                        f"no read index within {timeout:.2f}s (is there a leader and a quorum?)"
                    )
                self._call(ask, remaining)  # NoLeaderError at once: no leader to ask
                try:
                    return future.result(min(retry_every, max(0.0, deadline - time.monotonic())))
                except FutureTimeout:
                    continue
        finally:
            for context in contexts:
                self._reads.pop(context, None)

    def transfer_leadership(
        self, target: str | None = None, *, timeout: float | None = None
    ) -> None:
        """Ask this leader to hand leadership to ``target`` (default: the most up-to-date
        follower). Returns once asked; watch :attr:`status` for the outcome."""

        def transfer(core: RaftCore) -> None:
            chosen = target or core.most_up_to_date_voter()
            if chosen is not None:
                core.transfer_leadership(chosen)

        self._call(transfer, self._default_timeout(timeout))

    def _default_timeout(self, timeout: float | None) -> float:
        if timeout is not None:
            return timeout
        return max(5.0, 20 * self.config.election_timeout.total_seconds())

    def _call(self, fn: Callable[[RaftCore], T], timeout: float) -> T:
        """Run ``fn(core)`` on the Raft loop and return its result (or raise its error)."""
        call = _Call(fn)
        result: T = self._on_loop(call, call.future, timeout)
        return result

    def _on_loop(self, event: object, future: Future[T], timeout: float) -> T:
        """Queue ``event`` for the Raft loop and wait for its ``future``."""
        self._check_process()
        if not self.running:
            raise CatgaError(
                f"node {self.node_id} is not running"
                + (f" (it failed: {self._failure})" if self._failure else "; call start() first")
            )
        self._inbox.put(event)
        try:
            result = future.result(timeout)
        except FutureTimeout:
            raise CommitTimeoutError(
                f"the Raft loop of node {self.node_id} did not answer within {timeout:.2f}s"
            ) from None
        return result

    # ========================================================================================
    # The Raft loop

    def _run(self) -> None:
        core = self._core
        assert core is not None
        inbox = self._inbox
        tick = self._tick_seconds
        try:
            while True:
                wake = self._tick_origin + (self._ticks_done + 1) * tick
                if self._parked:
                    wake = min(wake, min(deadline for _, deadline in self._parked.values()))
                try:
                    event = inbox.get(timeout=max(0.0, wake - time.monotonic()))
                except queue.Empty:
                    event = _TICK
                if event is _STOP:
                    return
                self._handle(core, event)
                # Drain what else arrived, so one Ready (one transaction) covers the batch.
                for _ in range(4096):
                    try:
                        event = inbox.get_nowait()
                    except queue.Empty:
                        break
                    if event is _STOP:
                        self._append_proposals(core)
                        self._process_ready(core)
                        return
                    self._handle(core, event)
                self._append_proposals(core)
                self._tick(core)
                self._process_ready(core)
                if self._parked:
                    assert self._transport is not None
                    self._flush_parked(self._transport, time.monotonic())
                if self._reply_slots:
                    self._close_reply_slots()
        except BaseException as exc:  # a storage failure or a bug: stop, loudly
            self._failure = exc
            log.critical(
                "node %s: Raft loop failed, node stopped: %s",
                self.node_id,
                exc,
                exc_info=not isinstance(exc, StorageError),
            )
            self._fail_waiters(CatgaError(f"node {self.node_id} failed: {exc}"))
            self._publish_status(running=False)

    def _handle(self, core: RaftCore, event: object) -> None:
        if event is _TICK:
            return  # a wake-up: the loop runs whatever ticks are due after each batch
        if isinstance(event, _Proposal):
            self._proposals_drained.append(event)
            return
        self._append_proposals(core)  # keep the order of proposals and other calls
        if isinstance(event, _Call):
            try:
                event.future.set_result(event.fn(core))
            except BaseException as exc:
                event.future.set_exception(exc)
        elif isinstance(event, _ReplySlot):
            previous = self._reply_slots.get(event.peer)
            if previous is not None:
                previous.done.set()
            self._reply_slots[event.peer] = event
            for message in event.messages:
                self._step(core, message)
        else:
            self._step(core, event)  # type: ignore[arg-type]  # a peer message, by elimination

    def _step(self, core: RaftCore, message: Message) -> None:
        self.stats.messages_received += 1
        try:
            core.step(message)
        except CatgaError as exc:
            self.stats.invalid_messages += 1
            log.debug("node %s dropped a message: %s", self.node_id, exc)

    def _send(self, transport: Transport, messages: Sequence[Message]) -> None:
        """Send ``messages``; those for a peer whose request is open go back in its response,
        and a commit notice waits a moment for an AppendEntries to ride on."""
        messages = self._park_commit_notices(messages)
        self._deliver(transport, messages)

    def _park_commit_notices(self, messages: Sequence[Message]) -> Sequence[Message]:
        """Hold each AppendEntries without entries (the leader telling a follower the new
        commit index) for up to COMMIT_NOTICE_DELAY: the next proposal's AppendEntries, which
        carries the same commit index, usually comes sooner and makes it redundant. Under a
        stream of commands this halves the requests per command; a follower learns a commit
        at most that much later. Raft allows it: a delayed or dropped message is safe."""
        parked = self._parked
        if not parked and not any(type(m) is AppendEntries and not m.entries for m in messages):
            return messages
        out: list[Message] = []
        now = time.monotonic()
        for message in messages:
            if type(message) is not AppendEntries:
                out.append(message)
                continue
            held = parked.pop(message.to, None)
            if not message.entries and self._awaiting_commit.get(message.to):
                out.append(message)  # that follower forwarded a proposal: it waits for this
                continue
            if not message.entries:  # a newer notice replaces an older one, keeping its clock
                parked[message.to] = (message, held[1] if held else now + COMMIT_NOTICE_DELAY)
                self.stats.commit_notices_parked += 1
                continue
            if held is not None and (
                held[0].term != message.term or held[0].commit > message.commit
            ):
                out.append(held[0])  # not covered by this one: it still goes, first
            elif held is not None:
                self.stats.commit_notices_saved += 1
            out.append(message)
        return out

    def _forget_origin(self, origin: str) -> None:
        left = self._awaiting_commit[origin] - 1
        if left > 0:
            self._awaiting_commit[origin] = left
        else:
            del self._awaiting_commit[origin]

    def _flush_parked(self, transport: Transport, now: float) -> None:
        due = [peer for peer, (_, deadline) in self._parked.items() if deadline <= now]
        if due:
            self._deliver(transport, [self._parked.pop(peer)[0] for peer in due])

    def _deliver(self, transport: Transport, messages: Sequence[Message]) -> None:
        slots = self._reply_slots
        if slots:
            rest = []
            with self._slot_lock:
                for message in messages:
                    slot = slots.get(message.to)
                    if slot is not None and not slot.abandoned:
                        slot.replies.append(message)
                        self.stats.inline_replies += 1
                    else:
                        rest.append(message)
            messages = rest
        if messages:
            transport.send(messages)

    def _close_reply_slots(self) -> None:
        slots, self._reply_slots = self._reply_slots, {}
        for slot in slots.values():
            slot.done.set()

    def _persist(self, storage: Storage, ready: Ready) -> None:
        """Persist ``ready``; a change of the commit index alone without an fsync.

        Raft keeps the commit index volatile (a restarted node learns it again from the
        leader), so a Ready whose only durable change is the commit index is written without
        flushing it to disk (:meth:`Storage.persist` with ``sync=False``): that saves one fsync
        per command on every node, and the commit index still survives a crash of the process
        (``kill -9``), so a restarted node serves its local reads from the state it had.
        A power loss may roll it back, which Raft allows.
        """
        hard = ready.hard_state
        written = self._written_hard
        changed = hard if hard is not None and hard != written else None
        if not ready.entries and ready.snapshot is None:
            if changed is None:
                return
            sync = written is None or (changed.term, changed.vote) != (written.term, written.vote)
            if not sync:
                self.stats.commit_only_writes_unsynced += 1
        else:
            sync = True
        storage.persist(
            hard_state=changed,
            entries=ready.entries,
            snapshot=ready.snapshot,
            snapshot_replaces_log=ready.apply_snapshot,
            sync=sync,
        )
        if changed is not None:
            self._written_hard = changed

    def _append_proposals(self, core: RaftCore) -> None:
        """Append the proposals drained so far as one batch and answer each with its index."""
        batch = self._proposals_drained
        if not batch:
            return
        self._proposals_drained = []
        try:
            entries = core.propose_many([p.data for p in batch])
        except BaseException as exc:  # not the leader (any more): every one of them fails
            for proposal in batch:
                proposal.future.set_exception(exc)
            return
        for proposal, entry in zip(batch, entries, strict=True):
            waiter = _Waiter(entry.term, Future(), proposal.origin)
            if proposal.origin is not None:
                self._awaiting_commit[proposal.origin] += 1
            self._waiters[entry.index] = waiter
            proposal.future.set_result((entry.index, waiter.future))

    def _tick(self, core: RaftCore) -> None:
        """Run the ticks that elapsed on the monotonic clock since the last ones."""
        due = int((time.monotonic() - self._tick_origin) / self._tick_seconds) - self._ticks_done
        if due <= 0:
            return
        if due > 1:
            self.stats.late_ticks += due - 1
        # After a long pause (SIGSTOP, a debugger) one election timeout's worth is enough.
        for _ in range(min(due, core.config.election_ticks)):
            core.tick()
        self._ticks_done += due
        self.stats.ticks += due

    def _process_ready(self, core: RaftCore) -> None:
        storage, transport = self._storage, self._transport
        assert storage is not None and transport is not None
        changed = False
        while core.has_ready() or self._maybe_compact(core):
            ready = core.ready()
            self.stats.readies += 1
            if ready.early_messages:
                self._send(transport, ready.early_messages)
            self._persist(storage, ready)  # 1. persist
            self.stats.entries_persisted += len(ready.entries)
            self.stats.bytes_persisted += sum(len(e.data) for e in ready.entries)
            if ready.messages:  # 2. send
                self._send(transport, ready.messages)
            self.stats.messages_sent += len(ready.messages) + len(ready.early_messages)
            self._apply(ready)  # 3. apply
            core.advance(ready)  # 4. advance
            if ready.soft_state is not None or ready.committed_entries or ready.membership:
                changed = True
            if ready.membership is not None:
                self._on_membership(ready.membership)
        if changed or self._status.commit_index != core.commit_index:
            self._publish_status()

    def _apply(self, ready: Ready) -> None:
        if ready.apply_snapshot and ready.snapshot is not None:
            self._restore_snapshot(ready.snapshot.data, ready.snapshot.meta.index)
        for entry in ready.committed_entries:
            result: Any = None
            error: BaseException | None = None
            if entry.type is EntryType.NORMAL and entry.data:
                try:
                    result = self._applier(entry)
                except Exception as exc:  # the caller gets it; the loop goes on
                    error = exc
            waiter = self._waiters.pop(entry.index, None)
            if waiter is not None and waiter.origin is not None:
                self._forget_origin(waiter.origin)
            if waiter is not None:
                if waiter.term != entry.term:
                    waiter.future.set_exception(
                        ProposalDroppedError(
                            "the proposal was overwritten by a new leader before it committed; "
                            "retry it (with the same request id)"
                        )
                    )
                elif error is not None:
                    waiter.future.set_exception(error)
                else:
                    waiter.future.set_result(result)
        for read in ready.read_states:
            waiter_read = self._reads.get(read.context)
            if waiter_read is not None:
                waiter_read.index = read.index
        self._release_reads()

    def _apply_command(self, entry: Entry) -> Outcome:
        return self.state_machines.apply(entry.index, entry.data)

    def _restore_snapshot(self, data: bytes, index: int) -> None:
        if not self._custom_applier:
            self.state_machines.restore(data)

    def _maybe_compact(self, core: RaftCore) -> bool:
        """Snapshot the replicated state and compact the log every ``snapshot_every`` entries."""
        every = self.config.snapshot_every
        if self._custom_applier or core.applied_index - core.log.offset < every:
            return False
        core.compact(core.applied_index, self.state_machines.snapshot())
        self.stats.snapshots += 1
        return True

    def wait_applied(self, index: int, timeout: float) -> None:
        """Block until this node has applied ``index``; raises CommitTimeoutError."""
        try:
            self.wait_for(lambda s: s.last_applied >= index, timeout)
        except TimeoutError:
            raise CommitTimeoutError(
                f"node {self.node_id} did not apply index {index} within {timeout:.2f}s"
            ) from None

    def _release_reads(self) -> None:
        core = self._core
        if core is None or not self._reads:
            return
        applied = core.applied_index
        for context, waiter in list(self._reads.items()):
            if 0 <= waiter.index <= applied:
                del self._reads[context]
                if not waiter.future.done():  # a retried read shares its caller's future
                    waiter.future.set_result(waiter.index)

    def _on_membership(self, membership: Membership) -> None:
        transport = self._transport
        if transport is None:
            return
        peers = set(membership.nodes) - {self.raft_id}
        update = getattr(transport, "set_peers", None)
        if callable(update):
            update(sorted(peers))

    def _fail_waiters(self, error: BaseException) -> None:
        self._close_reply_slots()
        self._awaiting_commit.clear()
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(error)
        reads, self._reads = self._reads, {}
        for read in reads.values():
            if not read.future.done():
                read.future.set_exception(error)
        drained, self._proposals_drained = self._proposals_drained, []
        for proposal in drained:
            if not proposal.future.done():
                proposal.future.set_exception(error)

    # ========================================================================================
    # Status

    def _initial_status(self) -> NodeStatus:
        return NodeStatus(
            node_id=self.node_id,
            raft_id=self.raft_id,
            role=Role.FOLLOWER,
            term=0,
            leader_raft_id=None,
            leader_id=None,
            commit_index=0,
            commit_term=0,
            last_applied=0,
            members=tuple(sorted(self.config.voters)),
            running=False,
        )

    def _publish_status(self, *, running: bool | None = None) -> None:
        core = self._core
        old = self._status
        if core is None:
            new = old if running is None else _replace_running(old, running)
        else:
            soft = core.soft_state
            new = NodeStatus(
                node_id=self.node_id,
                raft_id=self.raft_id,
                role=soft.role,
                term=soft.term,
                leader_raft_id=soft.leader_id,
                leader_id=self.name_of(soft.leader_id),
                commit_index=core.commit_index,
                commit_term=core.log.term(core.commit_index) or 0,
                last_applied=core.applied_index,
                members=tuple(sorted(core.membership.voters)),
                running=self.running if running is None else running,
            )
        if new == old:
            return
        if new.leader_raft_id != old.leader_raft_id and new.leader_raft_id is not None:
            self.stats.leader_changes += 1
        if new.role is Role.CANDIDATE and old.role is not Role.CANDIDATE:
            self.stats.elections += 1
        with self._status_changed:
            self._status = new
            self._status_changed.notify_all()
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception:
                log.exception("status listener %r failed", listener)

    def wait_for(self, predicate: Callable[[NodeStatus], bool], timeout: float) -> NodeStatus:
        """Block until ``predicate(status)`` holds; raises TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._status_changed:
            while not predicate(self._status):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"node {self.node_id}: condition not met in {timeout}s")
                self._status_changed.wait(remaining)
            return self._status

    # ========================================================================================
    # Timers and the embedded server

    @property
    def scheduler(self) -> BaseScheduler:
        """The APScheduler scheduler of the node's jobs: the one it was given, or its own
        BackgroundScheduler (made on first use, started with the node, shut down with it)."""
        if self._scheduler is None:
            from apscheduler.schedulers.background import BackgroundScheduler

            self._scheduler = BackgroundScheduler(daemon=True)
        return self._scheduler

    def _start_tick_job(self) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        scheduler = self.scheduler
        _quiet_skip_warnings()
        scheduler.add_listener(self._on_job_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        scheduler.add_job(
            self._inbox.put,
            "interval",
            args=[_TICK],
            seconds=self.config.heartbeat_interval.total_seconds(),
            id=self._job_id,
            name=f"catga_sync tick ({self.node_id})",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            replace_existing=True,
        )
        if not scheduler.running:
            scheduler.start()

    def _on_job_skipped(self, event: Any) -> None:
        if getattr(event, "job_id", None) == self._job_id:
            self.stats.skipped_jobs += 1

    def _start_server(self) -> None:
        from urllib.parse import urlsplit

        from .web.worker_app import create_worker_app, make_threaded_server

        parts = urlsplit(self.raft_id)
        app = create_worker_app(self)
        host = parts.hostname or "127.0.0.1"
        self._server = make_threaded_server(app, host, parts.port or 80)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, name=f"catga-http-{self.node_id}", daemon=True
        )
        self._server_thread.start()

    # ========================================================================================
    # Fork safety

    def _check_process(self) -> None:
        if self._forked_from is not None or os.getpid() != self._pid:
            raise CatgaError(
                f"node {self.node_id} was created in process {self._pid} and cannot run in "
                f"forked child {os.getpid()}: its threads and connections did not survive the "
                "fork. Create and start the node after forking (gunicorn: no --preload, or "
                "start it in post_fork; one worker per node, with threads)."
            )

    def _after_fork_in_child(self) -> None:
        self._forked_from = self._pid


def _stop_at(deadline: float) -> tenacity.stop.stop_base:
    """Stop retrying once the monotonic ``deadline`` has passed."""

    class _StopAt(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return time.monotonic() >= deadline

    return _StopAt()


def _replace_running(status: NodeStatus, running: bool) -> NodeStatus:
    from dataclasses import replace

    return replace(status, running=running)


_NODES: weakref.WeakSet[ClusterNode] = weakref.WeakSet()


def _track_fork(node: ClusterNode) -> None:
    _NODES.add(node)


def _mark_forked_children() -> None:
    for node in list(_NODES):
        node._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_children)


class _SkipFilter(logging.Filter):
    """Drop APScheduler's per-run "skipped"/"missed" warnings for our tick jobs: they are
    counted in NodeStats instead (a busy process would otherwise log one every 10 ms)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "catga_sync tick" not in message


_FILTER = _SkipFilter()


def _quiet_skip_warnings() -> None:
    for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
