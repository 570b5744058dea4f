"""The guide's request-forwarding behaviors, and the forwarder that carries commands to the leader.

- :class:`LeaderOnlyBehavior` (``AddLeaderOnlyBehavior<TReq, TRes>()``): a follower refuses the
  command with :class:`~catga_sync.errors.NotLeaderError` naming the leader.
- :class:`ForwardToLeaderBehavior` (``AddForwardToLeaderBehavior<TReq, TRes>()``): a follower
  sends the command to the leader's forwarding endpoint and returns the handler's result, or
  raises the handler's error (same type, same message). A leader change, a lost answer or a
  leader that just stepped down is retried with tenacity until one total deadline, against
  whoever leads by then, always with the same idempotency key.
- :class:`ClusterForwarder` (``IClusterForwarder``) is the port; :class:`HttpClusterForwarder`
  the default, speaking ``POST {url_prefix}/forward`` (wire format: ``docs/request-forwarding``).

On the leader, :class:`ForwardingGuard` runs a forwarded command at most once per idempotency
key: it serializes duplicates of one key on a leader-local lock, answers a key it has seen from
the replicated :class:`~catga_sync.idempotency.IdempotencyTable`, and records the outcome of a
new one there once the handler returned. A forwarded command is never forwarded again (one hop).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import requests
import tenacity

from .coordinator import ClusterCoordinator
from .errors import (
    CatgaError,
    CommitTimeoutError,
    ForwardingError,
    IdempotencyKeyReusedError,
    LeaderUnreachableError,
    NoLeaderError,
    NotLeaderError,
    NotRegisteredError,
)
from .fsm import error_type_name, rebuild_error
from .idempotency import IdempotencyTable
from .mediator import (
    InvalidCommandError,
    Mediator,
    Next,
    UnknownCommandTypeError,
    current_dispatch,
)
from .runtime.extension import Extension
from .transport.signing import peer_post_headers
from .transport.wire import (
    DEFAULT_URL_PREFIX,
    WireFormatError,
    normalize_url_prefix,
    seconds_within,
)

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
    "encode_forward_request",
    "fingerprint",
    "guard_for",
    "not_leader_error",
]

log = logging.getLogger("catga_sync.forwarding")

FORWARD_PATH = "/forward"
"""``POST {url_prefix}/forward`` runs a command on the leader."""
HEADER_HOP = "X-Catga-Hop"
"""Marks a request that was already forwarded once: it is served where it lands, or refused."""
DEFAULT_FORWARD_TIMEOUT = 10.0
"""Seconds a forward may take in all, retries included, unless told otherwise."""
MAX_FORWARD_DEADLINE = 300.0
MAX_KEY_LENGTH = 200
RECORD_MIN_TIMEOUT = 2.0
"""Seconds the leader keeps trying to record an outcome even when the caller's deadline passed:
the handler ran, so its key must be remembered for the retry that will follow."""


# ================================================================================================
# The wire format


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A decoded ``POST {url_prefix}/forward`` body."""

    name: str
    command: Any
    payload: dict[str, Any]
    """The command re-encoded from the decoded dataclass (what the fingerprint covers)."""
    idempotency_key: str | None
    deadline: float
    """Seconds the caller still waits."""


def encode_forward_request(
    name: str, payload: Mapping[str, Any], idempotency_key: str | None, deadline: float
) -> bytes:
    body = {
        "command": name,
        "payload": dict(payload),
        "idempotency_key": idempotency_key,
        "deadline": round(deadline, 6),
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode_forward_request(body: bytes, mediator: Mediator) -> ForwardRequest:
    """Parse and check a forward request; :class:`WireFormatError` (a 400 answer) at the first
    problem, before anything runs."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WireFormatError(
            "malformed_json",
            'The body is not JSON. Send {"command": "<name>", "payload": {...}, '
            '"idempotency_key": "<key>", "deadline": <seconds>}.',
        ) from None
    allowed = {"command", "payload", "idempotency_key", "deadline"}
    if not isinstance(obj, dict) or not {"command", "payload"} <= set(obj) <= allowed:
        raise WireFormatError(
            "invalid_forward",
            'Expected a JSON object {"command": "<name>", "payload": {...}} with optional '
            '"idempotency_key" (string) and "deadline" (seconds); nothing else.',
        )
    name, payload = obj["command"], obj["payload"]
    if not isinstance(name, str) or not name:
        raise WireFormatError("invalid_forward", "command must be a non-empty string")
    key = obj.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable()
    ):
        raise WireFormatError(
            "invalid_forward",
            f"idempotency_key must be 1 to {MAX_KEY_LENGTH} printable characters, or null",
        )
    deadline = seconds_within(
        obj.get("deadline", DEFAULT_FORWARD_TIMEOUT),
        MAX_FORWARD_DEADLINE,
        code="invalid_forward",
        name="deadline",
    )
    try:
        command_type = mediator.type_of(name)
    except UnknownCommandTypeError as exc:
        raise WireFormatError("unknown_command", str(exc)) from None
    if not mediator.has_handler(command_type):
        raise WireFormatError(
            "unknown_command", f"command {name!r} has no handler on this node; nothing ran"
        )
    if not isinstance(payload, dict):
        raise WireFormatError("invalid_payload", "payload must be a JSON object of the fields")
    try:
        command = mediator.decode(name, payload)
        _name, canonical = mediator.encode(command)
    except InvalidCommandError as exc:
        raise WireFormatError("invalid_payload", str(exc)) from None
    return ForwardRequest(name, command, canonical, key, float(deadline))


def fingerprint(name: str, payload: Mapping[str, Any]) -> str:
    """A digest of a command, so that a key reused for another command is noticed. ``2`` and
    ``2.0`` are the same amount: the caller's dataclass may hold either."""
    canonical = json.dumps(
        {"command": name, "payload": _same_numbers(payload)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _same_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _same_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_numbers(v) for v in value]
    return value


# ================================================================================================
# Forwarders


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


class HttpClusterForwarder:
    """The default forwarder: ``POST {leader}{url_prefix}/forward``, signed like peer RPC when
    a secret is set, with ``X-Catga-Hop: 1``. One pooled session per thread."""

    def __init__(
        self,
        *,
        sender_id: str,
        sender_name: str | None = None,
        secret: str | None = None,
        url_prefix: str = DEFAULT_URL_PREFIX,
        connect_timeout: float = 1.0,
        mediator: Mediator | None = None,
    ) -> None:
        self.sender_id = sender_id
        self.sender_name = sender_name or sender_id
        self.secret = secret or None
        self.url_prefix = normalize_url_prefix(url_prefix)
        self.connect_timeout = connect_timeout
        self.mediator = mediator
        """Names and rebuilds commands; by default, the mediator running the current send."""
        self._local = threading.local()

    @classmethod
    def for_node(cls, node: NodeHandle, mediator: Mediator | None = None) -> HttpClusterForwarder:
        """A forwarder speaking for ``node``: its id, its secret, its URL prefix."""
        config = node.config
        return cls(
            sender_id=node.raft_id,
            sender_name=node.node_id,
            secret=config.secret,
            url_prefix=config.url_prefix,
            connect_timeout=max(config.election_timeout.total_seconds(), 0.1),
            mediator=mediator,
        )

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._local.session = session
        return session

    def _mediator(self) -> Mediator:
        if self.mediator is not None:
            return self.mediator
        dispatch = current_dispatch()
        if dispatch is None:
            raise CatgaError(
                "HttpClusterForwarder needs a mediator to name the command: give it one "
                "(mediator=...) or call it from a Mediator.send"
            )
        return dispatch.mediator

    def forward(
        self, command: Any, leader_endpoint: str, *, timeout: float, idempotency_key: str
    ) -> Any:
        mediator = self._mediator()
        name, payload = mediator.encode(command)
        path = f"{self.url_prefix}{FORWARD_PATH}"
        body = encode_forward_request(name, payload, idempotency_key, max(timeout, 0.001))
        headers = peer_post_headers(
            self.secret, path, body, self.sender_id, self.sender_name, time.time()
        )
        headers[HEADER_HOP] = "1"
        try:
            response = self._session().post(
                f"{leader_endpoint.rstrip('/')}{path}",
                data=body,
                headers=headers,
                timeout=(self.connect_timeout, max(timeout, 0.001) + self.connect_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise LeaderUnreachableError(
                f"could not reach the leader {leader_endpoint}: {exc}",
                maybe_delivered=_maybe_delivered(exc),
            ) from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        status = response.status_code
        if status == 200 and isinstance(answer, dict):
            error = answer.get("error")
            if isinstance(error, dict):
                raise rebuild_error(str(error.get("type")), str(error.get("message", "")))
            return mediator.decode_result(name, answer.get("result"))
        answer = answer if isinstance(answer, dict) else {}
        message = str(answer.get("message") or response.text[:300])
        if status == 409 and answer.get("error") == "not_leader":
            known = answer.get("leader")
            if known:
                raise NotLeaderError(leader_id=known, leader_endpoint=known)
            raise NoLeaderError()
        if status == 503:
            raise LeaderUnreachableError(
                f"the leader {leader_endpoint} is not serving ({status}): {message}",
                maybe_delivered=False,
            )
        if status == 504:
            raise CommitTimeoutError(
                f"the leader {leader_endpoint} did not finish in time: {message}. The outcome "
                f"is unknown; retrying with the same idempotency key ({idempotency_key}) is safe.",
                idempotency_key,
            )
        if status >= 500:
            raise LeaderUnreachableError(
                f"the leader {leader_endpoint} failed ({status}): {message}"
            )
        raise ForwardingError(
            f"the leader {leader_endpoint} refused the forwarded command {name!r} ({status} "
            f"{answer.get('error', '')}): {message}"
        )


def _maybe_delivered(exc: requests.RequestException) -> bool:
    """False only when the connection itself could not be made (nothing was sent)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        from urllib3.exceptions import NewConnectionError

        return not isinstance(reason, NewConnectionError)
    return True


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
        timeout: float = DEFAULT_FORWARD_TIMEOUT,
        wait: tenacity.wait.wait_base | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
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
        if self._forwarder is None:
            self._forwarder = HttpClusterForwarder.for_node(self._coordinator.node)
        return self._forwarder

    def __call__(self, command: Any, next_: Next) -> Any:
        dispatch = current_dispatch()
        if dispatch is None:
            raise CatgaError("ForwardToLeaderBehavior runs inside Mediator.send; add it there")
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
        try:
            result = retrying(attempt)
        except _RETRYABLE as exc:
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
        if result is not _LOCAL:
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


class ForwardingGuard(Extension):
    """Runs commands at most once per idempotency key on one node while it leads.

    An extension of the node (``node.extensions["forwarding"]``, installed by ``ClusterNode``
    with its mediator, whose commands ``POST {url_prefix}/forward`` runs); it registers the
    :class:`~catga_sync.idempotency.IdempotencyTable` where the outcomes are recorded.
    ``guard_for(node)`` returns it.
    """

    name = "forwarding"

    def __init__(self, mediator: Mediator | None = None) -> None:
        self.mediator = mediator
        self._mutex = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, users]

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
            raise CatgaError(
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


def guard_for(node: NodeHandle) -> ForwardingGuard:
    """The node's guard (one per node, so its key locks are shared by every path)."""
    found = node.extensions.get(ForwardingGuard.name)
    if not isinstance(found, ForwardingGuard):
        raise NotRegisteredError(
            f"node {node.node_id} has no forwarding guard: install ForwardingGuard(mediator) on "
            "it (ClusterNode does)"
        )
    return found
