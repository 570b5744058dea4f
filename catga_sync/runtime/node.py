"""The engine: a Raft node's lifecycle and what other threads ask of it.

:class:`RaftNode` opens the storage, builds the core, starts the Raft loop
(:mod:`~catga_sync.runtime.loop`, which states the persist → send → apply → advance contract)
and the scheduler pacemaker (:mod:`~catga_sync.runtime.timers`), and stops them in order. Its
methods are what callers on other threads use: propose, submit, read barriers, leadership
transfer, state handles. It knows no feature: the coordinator, tasks, jobs, locks, forwarding
and the server are extensions (:mod:`~catga_sync.runtime.extension`) that ClusterNode adds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import ClusterConfig
from ..config_values import Duration, seconds
from ..errors import (
    AlreadyRegisteredError,
    CatgaError,
    NodeNotRunningError,
    NotRegisteredError,
    UsageError,
)
from ..fsm import ReplicatedState, StateMachine
from ..raft import Entry, Membership, Message, RaftCore, Role
from ..storage import open_storage
from ..storage.base import Storage
from ..transport.base import Transport
from ..transport.proposals import ProposalClient
from .backup import NodeBackup
from .calls import NodeCalls
from .extension import Extension
from .fork import ForkGuard
from .loop import RaftLoop
from .measures import rpc_observer
from .membership import NodeMembership
from .outbox import Outbox, ReplySlot
from .remote import LocalClientMode
from .state import ClientSession, StateHandle
from .status import NodeStats, NodeStatus, StatusBoard, StatusListener
from .timers import Pacemaker

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

__all__ = ["RaftNode"]

log = logging.getLogger("catga_sync.node")

M = TypeVar("M", bound=StateMachine)
E = TypeVar("E", bound=Extension)
N = TypeVar("N", bound="RaftNode")


class RaftNode(NodeCalls, NodeMembership, NodeBackup, LocalClientMode):
    """One member of a catga_sync cluster, without features: the engine.

    ``storage`` and ``transport`` default to the configured SQL or memory storage and the HTTP
    transport; ``applier`` replaces the replicated state machines (the core's tests use it).
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        scheduler: BaseScheduler | None = None,
        storage: Storage | None = None,
        transport: Transport | None = None,
        applier: Callable[[Entry], Any] | None = None,
        rng: random.Random | None = None,
        session_ttl: float = 3600.0,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.raft_id = config.raft_id
        self.timeouts = config.timeouts
        self.stats = NodeStats()
        self.extensions: dict[str, Extension] = {}
        """The features plugged into this node, by name (see :class:`Extension`)."""
        self.state_machines = ReplicatedState(session_ttl=session_ttl)
        """The replicated state machines and client sessions (see :mod:`catga_sync.fsm`)."""
        self._storage = storage
        self._transport = transport
        self._applier = applier
        self._rng = rng or random.Random(hash((config.raft_id, os.getpid(), time.time_ns())))
        self._client = ClientSession(f"{config.node_id}-{uuid.uuid4().hex[:12]}")
        self._proposals: ProposalClient | None = None
        self._admin_client = None
        self._change_lock = threading.Lock()
        self._change_running: str | None = None
        self._peers: frozenset[str] = frozenset()
        self._leaving: dict[str, float] = {}
        """Removed peers whose sender lives on until this monotonic time."""
        self._loop: RaftLoop | None = None
        self._pacemaker = Pacemaker(
            self.node_id,
            f"catga-tick-{self.node_id}-{id(self):x}",
            self.timeouts.heartbeat,
            self._wake,
            self._count_skipped_job,
            scheduler,
        )
        self._fork = ForkGuard(self.node_id)
        self._lifecycle = threading.Lock()
        self._stopping_event = threading.Event()
        self._started = self._stopping = self._stopped = False
        self._start_failure: BaseException | None = None
        self._names: dict[str, str] = {self.raft_id: self.node_id}
        self._board = StatusBoard(
            NodeStatus(
                node_id=self.node_id,
                raft_id=self.raft_id,
                role=Role.FOLLOWER,
                term=0,
                leader_raft_id=None,
                leader_id=None,
                commit_index=0,
                commit_term=0,
                last_applied=0,
                members=() if config.join else tuple(sorted(config.voters)),
                running=False,
                membership="joining" if config.join else "voter",
            ),
            self.stats,
            joining=config.join,
        )
        self._board.add_listener(self._pacemaker.on_status)  # its job runs while leading

    # ========================================================================================
    # Extensions

    def add_extension(self, extension: E) -> E:
        """Install ``extension`` before :meth:`start`; it starts with the node, stops before."""
        name = extension.name
        if not name:
            raise UsageError(f"extension {type(extension).__name__} needs a non-empty `name`")
        if name in self.extensions:
            raise AlreadyRegisteredError(
                f"an extension named {name!r} is already installed on node {self.node_id}"
            )
        if self._started:
            raise UsageError(
                f"install extension {name!r} before starting node {self.node_id}: its state "
                "machines must see the log from the first entry"
            )
        extension.install(self)
        self.extensions[name] = extension
        return extension

    def extension(self, name: str) -> Extension:
        """The installed extension ``name``; raises NotRegisteredError."""
        try:
            return self.extensions[name]
        except KeyError:
            raise NotRegisteredError(
                f"node {self.node_id} has no extension {name!r} (installed: "
                f"{sorted(self.extensions)})"
            ) from None

    # ========================================================================================
    # Lifecycle

    def start(self: N) -> N:
        """Open storage, start every extension, then the Raft loop and the pacemaker job.

        Extensions start before the loop, so that one that fails (the embedded server's port
        is taken) fails the start before this node has voted, campaigned or run leader-only
        work. A failed start is final: the node releases everything and raises."""
        self._fork.check()
        with self._lifecycle:
            if self._start_failure is not None:
                raise NodeNotRunningError(
                    f"node {self.node_id} failed to start ({self._start_failure}); create a "
                    "new ClusterNode"
                )
            if self._stopped or self._stopping:
                raise NodeNotRunningError(
                    f"node {self.node_id} was stopped; create a new ClusterNode"
                )
            if self._started:
                return self
            self._started = True
            started: list[Extension] = []
            try:
                loop = self._prepare_engine()
                for extension in self.extensions.values():
                    extension.start()
                    started.append(extension)
                self._publish_status()  # running, with what the disk holds
                loop.start()
                self._pacemaker.start()
            except BaseException as exc:
                self._start_failure = exc
                self._stopped = True
                self._stop_extensions(started)
                self._release_resources()
                raise
        log.info(
            "node %s started at %s (term %d, %d members, state: %s)",
            self.node_id,
            self.raft_id,
            self._board.status.term,
            len(self._board.status.members),
            self._storage.describe() if self._storage is not None else "?",
        )
        return self

    def _prepare_engine(self) -> RaftLoop:
        """Open the storage and build the core, the transport and the loop (not started)."""
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
        persisted = self._storage.open()
        if persisted.snapshot is not None and self._applier is None:
            self.state_machines.restore(persisted.snapshot.data)
        core = RaftCore(config.raft_config(), rng=self._rng, persisted=persisted)
        self._warn_if_members_differ(core.membership)
        self._peers = frozenset(core.membership.nodes) - {self.raft_id}
        if self._transport is None:
            from ..transport.http import HttpTransport

            self._transport = HttpTransport(
                sender_id=self.raft_id,
                sender_name=self.node_id,
                peers=[m for m in core.membership.nodes if m != self.raft_id],
                secret=config.secret,
                url_prefix=config.url_prefix,
                timeout=self.timeouts.peer_request,
                max_batch_bytes=config.max_message_bytes,
                pipeline_depth=config.pipeline_depth,
                frames=config.peer_frames,
                reply_receiver=self,
                ssl_context=config.tls_client.context(),
                rpc_observer=rpc_observer(self.stats, lambda: self._board.status.is_leader),
            )
        machines = self.state_machines
        self._loop = RaftLoop(
            self.node_id,
            core,
            self._storage,
            Outbox(self._transport, self.stats, self.timeouts.commit_notice_delay),
            self.stats,
            hard_state=persisted.hard_state,
            tick_seconds=self.timeouts.tick,
            apply=self._applier or (lambda entry: machines.apply(entry.index, entry.data)),
            restore=(lambda data: None) if self._applier else machines.restore,
            snapshot=None if self._applier else machines.snapshot,
            snapshot_every=config.snapshot_every,
            published=self._on_batch,
            name_of=self.name_of,
            background_snapshot_after=config.background_snapshot_seconds,
        )
        return self._loop

    def stop(self, *, transfer: bool = True, timeout: Duration | None = None) -> None:
        """Stop the node. A leader first hands leadership to its most up-to-date follower, so
        the cluster does not wait an election timeout; then the extensions stop (in reverse
        order), then the loop, the pacemaker job, the transport and the storage. Idempotent."""
        with self._lifecycle:
            if self._stopped or self._stopping:
                return
            self._stopping = True
            self._stopping_event.set()
        if transfer and self.running and not self._fork.forked:
            self.hand_off(timeout)
        if self._started:
            self._stop_extensions(list(self.extensions.values()))
        with self._lifecycle:
            self._stopped = True
        self._release_resources()
        log.info("node %s stopped", self.node_id)

    def _stop_extensions(self, extensions: list[Extension]) -> None:
        for extension in reversed(extensions):
            try:
                extension.stop()
            except Exception:
                log.exception("node %s: extension %s failed to stop", self.node_id, extension.name)

    def hand_off(self, timeout: Duration | None = None) -> None:
        """A leader hands leadership to its most up-to-date follower and waits (up to
        ``timeout``, default two election timeouts plus 0.5 s) until it has; anything else does
        nothing. ``stop()`` does it first; a server about to stop calls it as soon as it knows
        (gunicorn: on SIGTERM, before its workers finish their requests)."""
        if not self._board.status.is_leader:
            return
        timeout = seconds(timeout) or self.timeouts.hand_off
        try:
            target = self._call(lambda core: core.most_up_to_date_voter(), timeout)
            if target is None:
                return
            self._call(lambda core: core.transfer_leadership(target), timeout)
        except CatgaError as exc:
            log.info("node %s: no leadership hand-off on stop: %s", self.node_id, exc)
            return
        try:
            self.wait_for(lambda s: not s.is_leader, timeout)
        except TimeoutError:
            log.warning(
                "node %s: leadership hand-off did not finish in %.2fs", self.node_id, timeout
            )
        else:
            log.info(
                "node %s handed leadership to %s", self.node_id, self._names.get(target, target)
            )

    def _release_resources(self) -> None:
        self._pacemaker.stop()
        loop, storage = self._loop, self._storage
        stopped = NodeNotRunningError(f"node {self.node_id} stopped")
        if loop is not None and not loop.stop(stopped):
            log.warning(
                "node %s: the Raft loop did not stop within 5 s (a write that hangs?); it "
                "stops, and closes the storage, once its batch ends",
                self.node_id,
            )
            if storage is not None:
                loop.after_exit(storage.close)  # the loop still owns the storage
            storage = None
        if self._transport is not None:
            self._transport.close()
        if storage is not None:
            storage.close()
        self._board.publish_running(False)

    @property
    def running(self) -> bool:
        loop = self._loop
        return self._started and not self._stopped and loop is not None and loop.failure is None

    def __enter__(self: N) -> N:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ========================================================================================
    # What other threads call

    @property
    def status(self) -> NodeStatus:
        """The latest status (updated by the Raft loop after every batch; a local client's:
        the hosting worker's, :mod:`~catga_sync.runtime.remote`)."""
        return self._active_board().status

    @property
    def transport(self) -> Transport | None:
        return self._transport

    @property
    def scheduler(self) -> BaseScheduler:
        """The APScheduler scheduler of the node's jobs: the one it was given, or its own
        BackgroundScheduler (made on first use, started and shut down with the node)."""
        return self._pacemaker.scheduler

    def add_status_listener(self, listener: StatusListener, *, mirrored: bool = False) -> None:
        """Call ``listener(old, new)`` on the Raft loop after the status changed. Keep it short
        and non-blocking (the coordinator hands events to its own thread). ``mirrored``: also
        the host's status while this node is a local client (not for leader-only work)."""
        self._board.add_listener(listener)
        if mirrored:
            self._add_mirrored_listener(listener)

    def name_of(self, raft_id: str | None) -> str | None:
        """The human node id of a member, when known (learned from its requests)."""
        return None if raft_id is None else self._names.get(raft_id, raft_id)

    def receive(self, messages: Sequence[Message], sender_name: str | None) -> None:
        """Queue validated peer messages for the Raft loop (the PeerReceiver port)."""
        loop = self._loop
        if loop is None or not messages:
            return
        if sender_name:
            self._names.setdefault(messages[0].frm, sender_name)
        for message in messages:
            loop.put_message(message)

    def receive_and_reply(
        self,
        messages: Sequence[Message],
        sender_name: str | None,
        timeout: float,
        *,
        queued: Callable[[], None] | None = None,
    ) -> list[Message]:
        """The InlineReplyReceiver port: queue ``messages``, call ``queued``, wait (up to
        ``timeout``) until the loop has handled them and return what it had to send to their
        sender meanwhile. After the timeout late replies go out as requests."""
        loop = self._loop
        if loop is None or not messages:
            return []
        if sender_name:
            self._names.setdefault(messages[0].frm, sender_name)
        slot = ReplySlot(messages[0].frm, messages)
        loop.put(slot)
        if queued is not None:
            queued()
        if not slot.done.wait(timeout):
            loop.outbox.abandon(slot)
            return []
        return slot.replies

    def register(self, machine: StateMachine) -> StateMachine:
        """Register a replicated state machine. Every node must register the same machines,
        before :meth:`start`, so that the log replays into them from the first entry."""
        if self._started:
            raise UsageError(
                f"register state machine {type(machine).__name__} before starting node "
                f"{self.node_id}: entries replayed at start would otherwise miss it"
            )
        return self.state_machines.register(machine)

    def state(self, machine: type[M] | M, *, timeout: float | None = None) -> StateHandle[M]:
        """A handle to call the registered state machine ``machine`` (class or instance)."""
        for registered in self.state_machines.machines.values():
            if registered is machine or type(registered) is machine:
                return StateHandle(self, registered, self._client, timeout=timeout)
        name = getattr(machine, "__name__", type(machine).__name__)
        raise NotRegisteredError(
            f"state machine {name} is not registered on node {self.node_id}: register an "
            "instance with node.register(...) (or CatgaCluster(state_machines=[...])) before start"
        )

    def state_size_bytes(self) -> int | None:
        """Bytes the node's Raft state takes on disk (SQLite: its files), None when its
        storage does not say (memory, a database server)."""
        size = getattr(self._storage, "size_bytes", None)
        return size() if callable(size) else None

    def _count_skipped_job(self) -> None:
        self.stats.skipped_jobs += 1

    # ========================================================================================
    # Status

    def _on_batch(self, membership: Membership | None) -> None:
        """On the loop, after a batch that changed what the status shows."""
        if membership is not None or self._leaving:
            self._update_peers(membership)
        self._publish_status()

    def _update_peers(self, membership: Membership | None) -> None:
        # A removed node keeps its sender a while: the leader goes on sending it the log for
        # three election timeouts (raft/core.py FAREWELL_ELECTIONS) until it holds its
        # removal (so it stops campaigning), and that must not die in a closed queue.
        now = time.monotonic()
        changed = membership is not None
        if membership is not None:
            peers = frozenset(membership.nodes) - {self.raft_id}
            for node in self._peers - peers:
                self._leaving[node] = now + self.timeouts.election * 4
                self._expire_leaving_later(self.timeouts.election * 4)
            for node in peers:
                self._leaving.pop(node, None)
            self._peers = peers
        for node, until in list(self._leaving.items()):
            if until <= now:
                del self._leaving[node]
                changed = True
        update = getattr(self._transport, "set_peers", None)
        if changed and callable(update):
            update(sorted(self._peers | set(self._leaving)))

    def _expire_leaving_later(self, seconds: float) -> None:
        # An idle cluster runs no batch that would let go of the sender: come back for it.
        def expire() -> None:
            # Stopped meanwhile: its transport closed every sender already.
            with contextlib.suppress(CatgaError):
                self.run_on_loop(lambda: self._update_peers(None), timeout=1.0)

        timer = threading.Timer(seconds + 0.05, expire)
        timer.daemon = True
        timer.start()

    def _publish_status(self) -> None:
        loop = self._loop
        if loop is None:
            self._board.publish_running(self.running)
        else:
            self._board.publish_core(
                loop.core, self.name_of, self.running, loop.storage_unavailable
            )
