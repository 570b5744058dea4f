"""What other threads ask of the Raft loop: proposals, commands from any node, read barriers,
leadership transfer, and waiting for an index to be applied.

A part of :class:`~catga_sync.runtime.node.RaftNode` (a mixin, so the lifecycle and the calls
each fit in a file one can read top to bottom); every call goes through the loop's inbox and
waits on a future, with a timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from ..config import ClusterConfig, Timeouts
from ..config_values import Duration, seconds
from ..errors import (
    CommitTimeoutError,
    ForwardingError,
    NodeNotRunningError,
    NoLeaderError,
    NotLeaderError,
    NotRegisteredError,
    ProposalDroppedError,
)
from ..fsm import Outcome, ReplicatedState
from ..raft import RaftCore
from ..transport.proposals import ProposalClient
from .fork import ForkGuard
from .loop import Call, Proposal, RaftLoop
from .status import NodeStatus, StatusBoard

if TYPE_CHECKING:
    from .remote import HostLink

__all__ = ["NodeCalls"]

T = TypeVar("T")

log = logging.getLogger("catga_sync.node")

_RETRYABLE = (NotLeaderError, ProposalDroppedError, ForwardingError, CommitTimeoutError)


class NodeCalls:
    """The calls of a running node (see the module docstring)."""

    node_id: str
    raft_id: str
    config: ClusterConfig
    timeouts: Timeouts
    _loop: RaftLoop | None
    _fork: ForkGuard
    _board: StatusBoard
    _stopping_event: threading.Event
    _proposals: ProposalClient | None
    _host_link: HostLink | None
    state_machines: ReplicatedState

    _active_board: Callable[[], StatusBoard]  # LocalClientMode: the mirror in a client

    @property
    def running(self) -> bool:
        raise NotImplementedError  # the node's lifecycle decides

    def run_on_loop(self, fn: Callable[[], T], *, timeout: Duration | None = None) -> T:
        """Run ``fn()`` on the Raft loop, between two batches (state machines are consistent
        there), and return its result."""
        return self._call(lambda core: fn(), self._default_timeout(timeout))

    def propose(self, data: bytes, *, timeout: Duration | None = None) -> Any:
        """Append ``data`` to the log through this node (which must lead) and wait until it is
        applied here; returns what the applier returned for it.

        Raises :class:`~catga_sync.errors.NotLeaderError` on a follower, and
        :class:`~catga_sync.errors.CommitTimeoutError` when the entry is not applied in time
        (its outcome is then unknown).
        """
        return self.propose_indexed(data, timeout=timeout)[1]

    def propose_indexed(self, data: bytes, *, timeout: Duration | None = None) -> tuple[int, Any]:
        """Like :meth:`propose`, and also return the entry's log index."""
        index, _, result = self.propose_forwarded(data, timeout=timeout)
        return index, result

    def propose_forwarded(
        self, data: bytes, *, timeout: Duration | None = None
    ) -> tuple[int, int, Any]:
        """Like :meth:`propose`; return the entry's index and term too, which a follower that
        forwarded it learns its commit from (``RaftCore.learn_commit``)."""
        timeout = self._default_timeout(timeout)
        if not isinstance(data, bytes):
            raise TypeError(f"a proposal must be bytes, not {type(data).__name__}")
        proposal = Proposal(data)
        try:
            return self._on_loop(proposal, proposal.future, timeout, timeout_error=False)
        except FutureTimeout:
            raise CommitTimeoutError(
                f"the proposal was not applied within {timeout:.2f}s; its outcome is unknown. "
                "Retrying with the same request id is safe."
            ) from None

    def submit(self, data: bytes, *, timeout: Duration | None = None) -> Outcome:
        """Run a command entry (:func:`catga_sync.fsm.encode_command`) through the cluster from
        any node, and return its outcome once it is applied *on this node*.

        On the leader it is proposed here; on a follower it is forwarded to the leader. A lost
        answer, a leader change or a new election is retried with the same bytes — the same
        (client, seq) request id — until ``timeout``, so the command is applied at most once.
        Raises :class:`~catga_sync.errors.CommitTimeoutError` when its outcome is unknown.
        """
        timeout = self._default_timeout(timeout)
        link = self._host_link
        if link is not None:  # a local client: the hosting worker runs it (runtime/remote.py)
            return link.submit(data, timeout=timeout)
        deadline = time.monotonic() + timeout
        sent = False  # once it has left this function, its outcome can no longer be known

        def attempt() -> Outcome:
            nonlocal sent
            remaining = deadline - time.monotonic()
            if self._loop is not None and self._loop.failure is not None:
                raise self._not_running()  # its storage broke: no retry can help
            if self._board.status.is_leader:
                sent = True
                return Outcome.coerce(self.propose_indexed(data, timeout=remaining)[1])
            leader = self._board.status.leader_endpoint
            if leader is None or leader == self.raft_id:
                raise NoLeaderError()
            sent = True
            index, term, outcome = self._proposal_client().forward(leader, data, remaining)
            loop = self._loop
            if term is not None and loop is not None:  # the answer carries the commit
                learn = Call(lambda core: core.learn_commit(index, term))
                learn.future.add_done_callback(_log_failure)
                loop.put(learn)
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
            if not sent and self._stopping_event.is_set():
                raise self._not_running() from exc  # stopped while waiting: never sent
            if not sent:
                # A node cut off with a minority never learns of a leader: the command never
                # left it, so say so (not applied, safe to send anew) rather than "unknown".
                raise NoLeaderError(
                    message=f"no leader was known for {timeout:.2f}s: this node cannot reach a "
                    "quorum of the cluster, and the command was not sent, so it was not applied"
                ) from exc
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
                connect_timeout=self.timeouts.peer_request,
                ssl_context=self.config.tls_client.context(),
                frames=self.config.peer_frames,
            )
        return self._proposals

    def query(
        self,
        machine: str,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: Duration | None = None,
        linearizable: bool = True,
    ) -> Any:
        """Run query ``method`` of the registered state machine named ``machine`` and return
        its result: after a read barrier (``linearizable``), or on this node's state as it is.
        A local client asks the hosting worker (linearizable either way: it holds no state)."""
        kwargs = dict(kwargs or {})
        link = self._host_link
        if link is not None:
            return link.query(
                machine, method, list(args), kwargs, timeout=self._default_timeout(timeout)
            )
        target = self.state_machines.machines.get(machine)
        if target is None:
            raise NotRegisteredError(
                f"no state machine named {machine!r} is registered on node {self.node_id}"
            )
        if linearizable:
            self.read_barrier(timeout=timeout)
        return self.run_on_loop(lambda: getattr(target, method)(*args, **kwargs), timeout=timeout)

    def read_barrier(self, *, timeout: Duration | None = None) -> int:
        """Wait until this node has applied everything committed before the call (a
        linearizable read point, thesis §6.4); returns that index.

        A read index request or its heartbeats can be lost (a dropped connection, a leader
        change), and the core never answers a lost read, so the request is asked again, as
        a new round, every two election timeouts until one is answered or ``timeout``.
        Raises NoLeaderError at once when no leader is known, CommitTimeoutError after
        ``timeout``."""
        timeout = self._default_timeout(timeout)
        deadline = time.monotonic() + timeout
        retry_every = self.timeouts.read_index_retry
        future: Future[int] = Future()
        contexts: list[str] = []
        loop = self._loop

        def ask(core: RaftCore) -> None:
            assert loop is not None
            contexts.append(loop.ask_read_index(core, future))

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
            if loop is not None:
                for context in contexts:
                    loop.forget_read(context)

    def transfer_leadership(
        self, target: str | None = None, *, timeout: Duration | None = None
    ) -> None:
        """Ask this leader to hand leadership to ``target`` (default: the most up-to-date
        follower). Returns once asked; watch :attr:`status` for the outcome."""

        def transfer(core: RaftCore) -> None:
            chosen = target or core.most_up_to_date_voter()
            if chosen is not None:
                core.transfer_leadership(chosen)

        self._call(transfer, self._default_timeout(timeout))

    def log_sizes(self, *, timeout: Duration = 1.0) -> tuple[int, int, int]:
        """``(entries, bytes of their data, bytes of the snapshot)`` of the Raft log this node
        holds now, read on the loop (for ``/metrics``)."""

        def sizes(core: RaftCore) -> tuple[int, int, int]:
            log = core.log
            snapshot = log.snapshot
            data = sum(len(e.data) for e in log.entries)
            return len(log.entries), data, len(snapshot.data) if snapshot is not None else 0

        return self._call(sizes, seconds(timeout))

    def wait_applied(self, index: int, timeout: Duration) -> None:
        """Block until this node has applied ``index``; raises CommitTimeoutError."""
        try:
            self.wait_for(lambda s: s.last_applied >= index, timeout)
        except TimeoutError:
            raise CommitTimeoutError(
                f"node {self.node_id} did not apply index {index} within {seconds(timeout):.2f}s"
            ) from None

    def wait_for(self, predicate: Callable[[NodeStatus], bool], timeout: Duration) -> NodeStatus:
        """Block until ``predicate(status)`` holds; raises TimeoutError after ``timeout``."""
        return self._active_board().wait_for(predicate, seconds(timeout), self.node_id)

    def _default_timeout(self, timeout: Duration | None) -> float:
        return self.timeouts.call if timeout is None else seconds(timeout)

    def _call(self, fn: Callable[[RaftCore], T], timeout: float) -> T:
        """Run ``fn(core)`` on the Raft loop and return its result (or raise its error)."""
        call = Call(fn)
        result: T = self._on_loop(call, call.future, timeout)
        return result

    def _on_loop(
        self, event: object, future: Future[T], timeout: float, *, timeout_error: bool = True
    ) -> T:
        """Queue ``event`` for the Raft loop and wait for its ``future``; past ``timeout``,
        raise :class:`CommitTimeoutError` (``timeout_error=False``: let ``FutureTimeout`` out,
        for the caller's own message)."""
        self._fork.check()
        loop = self._loop
        if not self.running or loop is None:
            raise self._not_running()
        loop.put(event)
        try:
            result = future.result(timeout)
        except FutureTimeout:
            if not timeout_error:
                raise
            raise CommitTimeoutError(
                f"the Raft loop of node {self.node_id} did not answer within {timeout:.2f}s"
            ) from None
        return result

    def _not_running(self) -> NodeNotRunningError:
        loop = self._loop
        failure = loop.failure if loop is not None else None
        return NodeNotRunningError(
            f"node {self.node_id} is not running"
            + (f" (it failed: {failure})" if failure else "; call start() first")
        )

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.nudge()


def _log_failure(future: Future[Any]) -> None:
    """Nobody waits for a learned commit: a failure there is a bug, said loudly."""
    error = future.exception()
    if error is not None:
        log.error("learning a commit from the leader's answer failed: %r", error)


def _stop_at(deadline: float) -> tenacity.stop.stop_base:
    """Stop retrying once the monotonic ``deadline`` has passed."""

    class _StopAt(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return time.monotonic() >= deadline

    return _StopAt()
