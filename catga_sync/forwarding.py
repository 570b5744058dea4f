"""The guide's request-forwarding behaviors, and the forwarder that carries commands to the leader.

- :class:`LeaderOnlyBehavior` (``AddLeaderOnlyBehavior<TReq, TRes>()``): a follower refuses the
  command with :class:`~catga_sync.errors.NotLeaderError` naming the leader.
- :class:`ForwardToLeaderBehavior` (``AddForwardToLeaderBehavior<TReq, TRes>()``): a follower
  sends the command to the leader's forwarding endpoint and returns the handler's result, or
  raises the handler's error (same type, same message). A leader change, a lost answer or a
  leader that just stepped down is retried with tenacity until one total deadline, against
  whoever leads by then, always with the same idempotency key.
- :class:`ClusterForwarder` (``IClusterForwarder``) is the port;
  :class:`~catga_sync.transport.forward_client.HttpClusterForwarder` the default, speaking
  ``POST {url_prefix}/forward`` (wire format: :mod:`catga_sync.transport.forward_wire`,
  ``docs/request-forwarding``). The client and the wire format live in ``transport/`` beside
  the other peer requests; their names are importable from here too.

On the leader, :class:`ForwardingGuard` runs a forwarded command at most once per idempotency
key: it serializes duplicates of one key on a leader-local lock, answers a key it has seen from
the replicated :class:`~catga_sync.idempotency.IdempotencyTable`, and records the outcome of a
new one there once the handler returned. A forwarded command is never forwarded again (one hop).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import tenacity

from .config_values import Duration, seconds
from .coordinator import ClusterCoordinator
from .errors import (
    CatgaError,
    CommitTimeoutError,
    IdempotencyKeyReusedError,
    LeaderUnreachableError,
    NoLeaderError,
    NotLeaderError,
    NotRegisteredError,
    UsageError,
)
from .fsm import error_type_name, rebuild_error
from .idempotency import IdempotencyTable
from .mediator import Mediator, Next, current_dispatch
from .runtime.extension import Extension
from .runtime.measures import Histogram, LabeledCounters, histogram, labeled_counter

# The wire format and the HTTP client moved beside the other peer requests in transport/;
# ``name as name`` re-exports each name that was importable from here, so old imports work.
from .transport.forward_client import HttpClusterForwarder as HttpClusterForwarder
from .transport.forward_client import _maybe_delivered as _maybe_delivered
from .transport.forward_wire import DEFAULT_FORWARD_TIMEOUT as DEFAULT_FORWARD_TIMEOUT
from .transport.forward_wire import FORWARD_PATH as FORWARD_PATH
from .transport.forward_wire import HEADER_HOP as HEADER_HOP
from .transport.forward_wire import MAX_FORWARD_DEADLINE as MAX_FORWARD_DEADLINE
from .transport.forward_wire import MAX_KEY_LENGTH as MAX_KEY_LENGTH
from .transport.forward_wire import ForwardRequest as ForwardRequest
from .transport.forward_wire import _same_numbers as _same_numbers
from .transport.forward_wire import decode_forward_request as decode_forward_request
from .transport.forward_wire import encode_forward_request as encode_forward_request
from .transport.forward_wire import fingerprint as fingerprint

if TYPE_CHECKING:
    from .runtime.extension import NodeHandle

__all__ = [
    "FORWARD_PATH",
    "HEADER_HOP",
    "ClusterForwarder",
    "ForwardRequest",
    "ForwardToLeaderBehavior",
    "ForwardingGuard",
    "HttpClusterForwarder",
    "IdempotencyKeyReusedError",
    "LeaderOnlyBehavior",
    "LeaderUnreachableError",
    "decode_forward_request",
    "default_forwarder",
    "encode_forward_request",
    "fingerprint",
    "guard_for",
    "not_leader_error",
]

log = logging.getLogger("catga_sync.forwarding")

RECORD_MIN_TIMEOUT = 2.0
"""Seconds the leader keeps trying to record an outcome even when the caller's deadline passed:
the handler ran, so its key must be remembered for the retry that will follow."""


# ================================================================================================
# The port: what carries a command to the leader (the HTTP one: transport/forward_client.py)


class ClusterForwarder(Protocol):
    """Carries a command to the leader and returns what its handler returned (the guide's
    ``IClusterForwarder``).

    Raise the handler's error as itself; :class:`~catga_sync.errors.NotLeaderError` (naming
    the leader it knows) when the target does not lead; :class:`LeaderUnreachableError` when it
    cannot be reached; both are retried by :class:`ForwardToLeaderBehavior` with the same
    ``idempotency_key``, which the leader must use to run the command once.
    """

    def forward(
        self, command: Any, leader_endpoint: str, *, timeout: float, idempotency_key: str
    ) -> Any: ...


# ================================================================================================
# Behaviors


class LeadershipView(Protocol):
    """What the behaviors read: a :class:`~catga_sync.coordinator.ClusterCoordinator`."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_endpoint(self) -> str | None: ...

    @property
    def leader_id(self) -> str | None: ...


def not_leader_error(view: LeadershipView) -> NotLeaderError:
    """The guide's error: "This node is not the leader. Leader: <endpoint>" (or "none")."""
    endpoint = view.leader_endpoint
    if endpoint is None:
        return NoLeaderError()
    return NotLeaderError(leader_id=view.leader_id, leader_endpoint=endpoint)


class LeaderOnlyBehavior:
    """Run the command only on the leader; elsewhere raise NotLeaderError naming the leader
    (the guide's ``AddLeaderOnlyBehavior<TReq, TRes>()``)."""

    def __init__(self, coordinator: LeadershipView) -> None:
        self._coordinator = coordinator

    def __call__(self, command: Any, next_: Next) -> Any:
        if self._coordinator.is_leader:
            return next_()
        raise not_leader_error(self._coordinator)


_LOCAL = object()
_RETRYABLE = (NotLeaderError, LeaderUnreachableError)


class ForwardToLeaderBehavior:
    """Run the command on the leader: here when this node leads, else through ``forwarder``
    (the guide's ``AddForwardToLeaderBehavior<TReq, TRes>()``).

    ``coordinator`` is the node's :class:`~catga_sync.coordinator.ClusterCoordinator` (or the
    node). ``timeout`` bounds the whole send, retries
    included (a shorter ``Mediator.send(timeout=...)`` wins). ``wait`` and ``sleep`` are
    tenacity's, injectable for tests.

    On the leader, a command sent with an ``idempotency_key`` runs at most once per key, as a
    forwarded one does; without one it just runs.
    """

    def __init__(
        self,
        coordinator: ClusterCoordinator | NodeHandle,
        forwarder: ClusterForwarder | None = None,
        *,
        timeout: Duration = DEFAULT_FORWARD_TIMEOUT,
        wait: tenacity.wait.wait_base | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        timeout = seconds(timeout)
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._coordinator: ClusterCoordinator = (
            coordinator
            if isinstance(coordinator, ClusterCoordinator)
            else ClusterCoordinator.of(coordinator)
        )
        self._forwarder = forwarder
        self._timeout = float(timeout)
        self._wait = wait or (
            tenacity.wait_exponential(multiplier=0.01, max=0.25) + tenacity.wait_random(0, 0.01)
        )
        self._sleep = sleep

    @property
    def forwarder(self) -> ClusterForwarder:
        """The forwarder given, else the node's default (:func:`default_forwarder`)."""
        return self._forwarder or default_forwarder(self._coordinator.node)

    def __call__(self, command: Any, next_: Next) -> Any:
        dispatch = current_dispatch()
        if dispatch is None:
            raise UsageError("ForwardToLeaderBehavior runs inside Mediator.send; add it there")
        coordinator = self._coordinator
        if dispatch.forwarded:
            # One hop only: a forwarded command runs here or is refused, never sent on.
            if coordinator.is_leader:
                return next_()
            raise not_leader_error(coordinator)
        timeout = min(self._timeout, dispatch.remaining(self._timeout))
        deadline = time.monotonic() + timeout
        key = dispatch.idempotency_key or uuid.uuid4().hex
        own_id = coordinator.node.raft_id
        hint: list[str | None] = [None]
        delivered = [False]

        def attempt() -> Any:
            if coordinator.is_leader:
                return _LOCAL
            leader, hint[0] = hint[0] or coordinator.leader_endpoint, None
            if leader is None or leader == own_id:
                raise NoLeaderError()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaderUnreachableError("no time left to forward", maybe_delivered=False)
            try:
                return self.forwarder.forward(
                    command, leader, timeout=remaining, idempotency_key=key
                )
            except NotLeaderError as exc:
                hint[0] = exc.leader_endpoint if exc.leader_endpoint != leader else None
                raise
            except LeaderUnreachableError as exc:
                delivered[0] = delivered[0] or exc.maybe_delivered
                raise

        retrying = tenacity.Retrying(
            stop=stop_at(deadline),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_RETRYABLE),
            sleep=self._sleep,
            reraise=True,
        )
        started = time.monotonic()
        try:
            result = retrying(attempt)
        except _RETRYABLE as exc:
            _count_forward(coordinator.node, _outcome_of(exc, delivered[0]), started)
            if delivered[0]:
                raise CommitTimeoutError(
                    f"{dispatch.command_name!r} was not answered by a leader within "
                    f"{timeout:.2f}s (last: {exc}); its outcome is unknown. Retrying with the "
                    f"same idempotency key ({key}) is safe: the leader runs it once.",
                    key,
                ) from exc
            if isinstance(exc, NoLeaderError):
                raise NoLeaderError(
                    message=f"no leader was known within {timeout:.2f}s, so "
                    f"{dispatch.command_name!r} did not run. Check that a majority of the "
                    "cluster is up and reachable."
                ) from exc
            raise
        except Exception:
            _count_forward(coordinator.node, "error", started)  # the handler's, on the leader
            raise
        if result is not _LOCAL:
            _count_forward(coordinator.node, "ok", started)
            return result
        if dispatch.idempotency_key is None:
            return next_()
        guard = guard_for(coordinator.node)
        mediator = dispatch.mediator
        name, payload = mediator.encode(command)
        ran = guard.run_once(
            name,
            key,
            fingerprint(name, payload),
            next_,
            deadline=deadline,
            encode=lambda result: mediator.encode_result(name, result),
        )
        return ran.unwrap(lambda value: mediator.decode_result(name, value))


def stop_at(deadline: float) -> tenacity.stop.stop_base:
    """A tenacity stop: no more attempts once the monotonic ``deadline`` has passed."""

    class _StopAt(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return time.monotonic() >= deadline

    return _StopAt()


# ================================================================================================
# The leader's side: at most once per idempotency key


@dataclass(frozen=True, slots=True)
class GuardedRun:
    """What :meth:`ForwardingGuard.run_once` gave."""

    wire: dict[str, Any]
    """The outcome as JSON: ``{"result": ...}`` or ``{"error": {"type", "message"}}``."""
    replayed: bool
    """True when the key was seen before and the handler did not run now."""
    result: Any = None
    error: BaseException | None = None

    def unwrap(self, decode: Callable[[Any], Any]) -> Any:
        """The result (the handler's own object, or ``decode(json)`` for a replay), or the
        error raised (the handler's own exception, or one rebuilt by type and message)."""
        if not self.replayed:
            if self.error is not None:
                raise self.error
            return self.result
        error = self.wire.get("error")
        if isinstance(error, dict):
            raise rebuild_error(str(error.get("type")), str(error.get("message", "")))
        return decode(self.wire.get("result"))


@dataclass
class ForwardStats:
    """What this node forwarded to the leader (exported as metrics)."""

    forwarded_requests: LabeledCounters = labeled_counter(
        "Commands this node forwarded to the leader, by outcome: ok, error (the handler "
        "raised), no_leader, unknown (maybe delivered, not answered in time), failed",
        "outcome",
    )
    forward_latency_seconds: Histogram = histogram(
        "Forwarded commands, from the first attempt to the answer (retries included)"
    )


def _outcome_of(exc: BaseException, delivered: bool) -> str:
    if delivered:
        return "unknown"
    return "no_leader" if isinstance(exc, NoLeaderError) else "failed"


def _count_forward(node: NodeHandle, outcome: str, started: float) -> None:
    found = node.extensions.get(ForwardingGuard.name)
    if isinstance(found, ForwardingGuard):
        found.stats.forwarded_requests.inc(outcome)
        found.stats.forward_latency_seconds.observe(time.monotonic() - started)


class ForwardingGuard(Extension):
    """Runs commands at most once per idempotency key on one node while it leads.

    An extension of the node (``node.extensions["forwarding"]``, installed by ``ClusterNode``
    with its mediator, whose commands ``POST {url_prefix}/forward`` runs); it registers the
    :class:`~catga_sync.idempotency.IdempotencyTable` where the outcomes are recorded.
    ``guard_for(node)`` returns it.
    """

    name = "forwarding"

    def __init__(
        self, mediator: Mediator | None = None, *, forwarder: ClusterForwarder | None = None
    ) -> None:
        if mediator is not None and not isinstance(mediator, Mediator):
            raise TypeError(
                f"ForwardingGuard takes the mediator whose commands it runs, not "
                f"{type(mediator).__name__} (it is installed with node.add_extension)"
            )
        if forwarder is not None and not callable(getattr(forwarder, "forward", None)):
            raise TypeError(
                f"forwarder= takes a ClusterForwarder (an object with a forward(command, "
                f"leader_endpoint, *, timeout, idempotency_key) method), not "
                f"{type(forwarder).__name__}"
            )
        self.mediator = mediator
        self.forwarder = forwarder
        """The node's default forwarder (``ClusterNode(forwarder=...)``); None: HTTP."""
        self._mutex = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, users]
        self.stats = ForwardStats()

    def counters(self) -> ForwardStats:
        return self.stats

    def install(self, node: NodeHandle) -> None:
        self._node = node
        if self.mediator is not None and IdempotencyTable.name not in node.state_machines.machines:
            node.register(IdempotencyTable())  # forwarded commands' outcomes

    def run_once(
        self,
        name: str,
        key: str | None,
        digest: str,
        run: Callable[[], Any],
        *,
        deadline: float,
        encode: Callable[[Any], Any],
    ) -> GuardedRun:
        """Run ``run()`` unless ``key`` already has a recorded outcome; record the new one.

        Raises NotLeaderError when ``run`` did (the command is taken as not run, and not
        recorded), CommitTimeoutError when the key's lock or record could not be read in time.
        """
        if key is None:
            return _capture(run, encode)
        scoped = f"{name}:{key}"
        with self._key_lock(scoped, deadline):
            table = self._table(deadline)
            entry = table.get(scoped)
            if entry is not None:
                if entry.get("fingerprint") not in (None, digest):
                    error = IdempotencyKeyReusedError(
                        f"the idempotency key {key!r} was already used for another {name!r} "
                        "command (different fields); use a new key for a new command"
                    )
                    return GuardedRun(_error_json(error), replayed=False, error=error)
                return GuardedRun(dict(entry["outcome"]), replayed=True)
            ran = _capture(run, encode)
            try:
                record_timeout = max(deadline - time.monotonic(), RECORD_MIN_TIMEOUT)
                self._node.state(IdempotencyTable, timeout=record_timeout).record(
                    scoped, ran.wire, digest
                )
            except CatgaError as exc:
                # The handler ran; its caller gets the outcome. A retry of this key may run it
                # again (docs/request-forwarding: what is and isn't guaranteed).
                log.warning(
                    "node %s: the outcome of %s (key %s) could not be recorded: %s",
                    self._node.node_id,
                    name,
                    key,
                    exc,
                )
            return ran

    def _table(self, deadline: float) -> Any:
        try:
            timeout = max(deadline - time.monotonic(), 0.05)
            handle = self._node.state(IdempotencyTable, timeout=timeout)
        except CatgaError:
            raise NotRegisteredError(
                f"node {self._node.node_id} has no {IdempotencyTable.name} table: give it the "
                "mediator (ClusterNode(config, mediator=...), CatgaCluster(app, mediator=...)) "
                "or register IdempotencyTable() on every node before start"
            ) from None
        return handle

    @contextmanager
    def _key_lock(self, key: str, deadline: float) -> Iterator[None]:
        with self._mutex:
            slot = self._locks.get(key)
            if slot is None:
                slot = self._locks[key] = [threading.Lock(), 0]
            slot[1] += 1
        lock: threading.Lock = slot[0]
        try:
            if not lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                raise CommitTimeoutError(
                    f"another request with the same idempotency key is still running here; "
                    f"retry with the same key ({key})",
                    key,
                )
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._mutex:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._locks[key]


def _capture(run: Callable[[], Any], encode: Callable[[Any], Any]) -> GuardedRun:
    try:
        result = run()
    except NotLeaderError:
        raise  # refused before it ran: the caller retries against the leader
    except Exception as exc:
        return GuardedRun(_error_json(exc), replayed=False, error=exc)
    try:
        wire = {"result": encode(result)}
    except CatgaError as exc:
        wire = _error_json(exc)
    return GuardedRun(wire, replayed=False, result=result)


def _error_json(exc: BaseException) -> dict[str, Any]:
    return {"error": {"type": error_type_name(exc), "message": str(exc)}}


def default_forwarder(node: NodeHandle) -> ClusterForwarder:
    """The forwarder every :class:`ForwardToLeaderBehavior` of ``node`` uses unless given
    another (the guide's one ``IClusterForwarder`` for the whole app): the one given to
    ``ClusterNode(forwarder=...)`` / ``CatgaCluster(forwarder=...)``, else an
    :class:`HttpClusterForwarder` for the node, made once."""
    found = node.extensions.get(ForwardingGuard.name)
    guard = found if isinstance(found, ForwardingGuard) else None
    if guard is not None and guard.forwarder is not None:
        return guard.forwarder
    http = HttpClusterForwarder.for_node(node)  # type: ignore[arg-type]
    if guard is not None:
        guard.forwarder = http
    return http


def guard_for(node: NodeHandle) -> ForwardingGuard:
    """The node's guard (one per node, so its key locks are shared by every path)."""
    found = node.extensions.get(ForwardingGuard.name)
    if not isinstance(found, ForwardingGuard):
        raise NotRegisteredError(
            f"node {node.node_id} has no forwarding guard: install ForwardingGuard(mediator) on "
            "it (ClusterNode does)"
        )
    return found
