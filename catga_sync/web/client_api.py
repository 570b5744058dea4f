"""The client routes, ``{url_prefix}/client/...``: what a process outside the cluster (a
:class:`~catga_sync.client.ClusterClient`: a cron script, a Celery worker, another service)
asks of any node — its status and a long poll on leadership, commands and linearizable
queries on the replicated state machines, and locks. The wire is
:mod:`catga_sync.transport.client_wire`; ``docs/client.rst`` tells the whole story.

Every request passes the bearer token check first (``ClientToken``, compared in constant
time; without one configured the routes are open and a WARNING says so once), then the strict
body checks of :mod:`catga_sync.web.bodies`: a bad body is a JSON 400 (413, 415) and nothing is
proposed. A command is the client's own entry bytes, so that its (client, seq) makes a retry
through any node apply once; the node stamps it with its own clock. A lock acquired here
leaves no thread behind: the node waits for the grant (:func:`~catga_sync.locks.wait_for_grant`)
and answers the token, and the client renews it; an acquire the client gave up on is
cancelled by its holder id (``/client/locks/cancel``), so that no grant is left to expire.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, jsonify, request

from ..errors import (
    CatgaError,
    CommitTimeoutError,
    InvalidLockRequestError,
    LockNotAcquiredError,
    LockNotHeldError,
    NoLeaderError,
    NotLeaderError,
    RequestBodyError,
)
from ..fsm import Outcome, error_type_name
from ..locks import (
    CLOCK_DRIFT,
    DEFAULT_TTL,
    LockTable,
    check_holder,
    check_name,
    check_owner,
    check_token,
    check_ttl,
    check_wait,
    wait_for_grant,
)
from ..locks.monitor import _monitor_of
from ..transport.client_wire import (
    COMMANDS_PATH,
    HEADER_LEADER,
    LEADERSHIP_PATH,
    LOCK_ACQUIRE_PATH,
    LOCK_CANCEL_PATH,
    LOCK_RELEASE_PATH,
    LOCK_RENEW_PATH,
    MAX_LONG_POLL,
    MAX_TIMEOUT,
    QUERIES_PATH,
    STATUS_PATH,
)
from ..transport.wire import normalize_url_prefix
from .bodies import json_body, parse_json

if TYPE_CHECKING:
    from ..runtime.extension import NodeHandle
    from ..runtime.status import NodeStatus

__all__ = ["LeadershipVersions", "create_client_blueprint", "status_document"]

logger = logging.getLogger(__name__)

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_COMMAND_KEYS = {"m": str, "op": str, "a": list, "k": dict}
_SESSION_KEYS = {"c", "s", "ack"}


class LeadershipVersions:
    """A number that grows each time this node's leader, term, role or running state changes:
    the ``version`` of the status document, which the leadership long poll waits on (a status
    listener: it counts on the Raft loop, and ``node.wait_for`` wakes the waiting requests)."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self, old: NodeStatus, new: NodeStatus) -> None:
        if _leadership(old) != _leadership(new):
            self.value += 1  # one publisher at a time (the status board serializes them)


def _leadership(status: NodeStatus) -> tuple[object, ...]:
    return status.term, status.role, status.leader_raft_id, status.running


def status_document(status: NodeStatus, version: int) -> dict[str, Any]:
    """What ``GET /client/status`` answers."""
    return {
        "node_id": status.node_id,
        "endpoint": status.raft_id,
        "role": status.role.value,
        "term": status.term,
        "is_leader": status.is_leader,
        "leader": status.leader_endpoint,
        "leader_id": status.leader_id,
        "commit_index": status.commit_index,
        "last_applied": status.last_applied,
        "members": list(status.members),
        "running": status.running,
        "version": version,
    }


class _Answer(Exception):
    """Ends a client request with a JSON error (raised in the views, answered by the handler)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


def create_client_blueprint(
    node: NodeHandle,
    *,
    token: str | None,
    max_body_bytes: int,
    url_prefix: str,
    name: str = "catga_client",
) -> Blueprint:
    """The client routes of ``node`` (see the module docstring) under ``url_prefix``.
    ``token``: the bearer token clients must send (None or empty: the routes are open)."""
    prefix = normalize_url_prefix(url_prefix)
    expected = token.encode("utf-8") if token else None
    if expected is None:
        logger.warning(
            "The client API at %s/client is open: no client token is set, so anyone who can "
            "reach this port can run commands and take locks. Set a client token "
            "(CATGA_CLUSTER_CLIENT_TOKEN in Flask config, Cluster__ClientToken in the "
            "environment, ClusterConfig(client_token=...)) and give it to the ClusterClients "
            "(ClusterClient(..., secret=token)).",
            prefix,
        )
    versions = LeadershipVersions()
    node.add_status_listener(versions)
    bp = Blueprint(name, __name__, url_prefix=prefix or None)

    @bp.before_request
    def authenticate() -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), expected
        ):
            raise _Answer(
                401,
                "unauthorized",
                "This node's client API needs the cluster's client token: send "
                "Authorization: Bearer <ClientToken> (ClusterClient(..., secret=...)).",
            )

    @bp.after_request
    def leader_hint(response: Response) -> Response:
        leader = node.status.leader_endpoint
        if leader is not None:
            response.headers[HEADER_LEADER] = leader
        return response

    def running_status() -> NodeStatus:
        status = node.status
        if not node.running or not status.running:
            raise _Answer(
                503,
                "unavailable",
                f"node {node.node_id} is not running (starting, stopping or failed); ask "
                "another node",
                leader=None,
                _headers={"Retry-After": "1"},
            )
        return status

    def body_object(required: set[str], optional: set[str]) -> dict[str, Any]:
        _method("POST")
        keys = ", ".join(f'"{k}"' for k in sorted(required | optional))
        shape = f"a JSON object with the keys {keys}"
        body = json_body(max_body_bytes, shape=shape)
        if not isinstance(body, dict):
            raise _bad(f"The body must be {shape}, not {type(body).__name__}.")
        missing, extra = sorted(required - set(body)), sorted(set(body) - required - optional)
        if missing or extra:
            raise _bad(
                f"The body must be {shape} ("
                + "; ".join(
                    ([f"missing {', '.join(missing)}"] if missing else [])
                    + ([f"unexpected {', '.join(extra)}"] if extra else [])
                )
                + ")."
            )
        return body

    @bp.route(STATUS_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def status() -> Response:
        _method("GET", "HEAD")
        return jsonify(status_document(running_status(), versions.value))

    @bp.route(LEADERSHIP_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def leadership() -> Response:
        _method("GET")
        after = _int_arg("after", -1)
        wait = _float_arg("wait", 0.0, MAX_LONG_POLL)
        running_status()
        with contextlib.suppress(TimeoutError):  # nothing changed: the current status
            node.wait_for(lambda _status: versions.value > after, wait)
        return jsonify(status_document(running_status(), versions.value))

    @bp.route(COMMANDS_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def commands() -> Response:
        body = body_object({"command"}, {"timeout"})
        data, request_id = _command_entry(node, body["command"])
        timeout = _timeout(body)
        running_status()
        try:
            outcome = node.submit(data, timeout=timeout)
        except CommitTimeoutError as exc:
            raise CommitTimeoutError(str(exc), exc.request_id or request_id) from exc
        return jsonify(outcome=outcome.to_json())

    @bp.route(QUERIES_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def queries() -> Response:
        body = body_object({"machine", "query"}, {"args", "kwargs", "timeout"})
        machine_name, method = body["machine"], body["query"]
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(machine_name, str) or not isinstance(method, str):
            raise _bad('"machine" and "query" must be strings')
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _bad('"args" must be a list and "kwargs" an object')
        timeout = _timeout(body)
        machine = node.state_machines.machines.get(machine_name)
        if machine is None:
            raise _Answer(
                404,
                "unknown_machine",
                f"no state machine {machine_name!r} is registered on node {node.node_id} "
                f"(registered: {sorted(node.state_machines.machines)})",
            )
        if method not in type(machine).queries():
            raise _Answer(
                400,
                "unknown_query",
                f"{machine_name} has no query {method!r} (queries: "
                f"{sorted(type(machine).queries())})",
            )
        running_status()
        node.read_barrier(timeout=timeout)
        query = getattr(machine, method)
        outcome = node.run_on_loop(lambda: _run_query(query, args, kwargs), timeout=timeout)
        return jsonify(outcome=outcome.to_json())

    @bp.route(LOCK_ACQUIRE_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def acquire() -> Response:
        body = body_object({"name"}, {"ttl", "wait", "owner", "holder"})
        name = check_name(body["name"])
        ttl = check_ttl(body.get("ttl", DEFAULT_TTL))
        wait = check_wait(body.get("wait", 0.0))
        owner = check_owner(body.get("owner") or f"client {request.remote_addr or '?'}")
        holder = check_holder(body.get("holder") or uuid.uuid4().hex)
        running_status()
        monitor = _monitor_of(node)
        watch = monitor.watch(holder)
        sent = monitor.clock()
        try:
            # A late grant is not given back: the client may hold it through another node
            # (a retry with the same holder); unclaimed, it expires after its TTL.
            token = wait_for_grant(
                node, watch, name, owner=owner, ttl=ttl, wait=wait, give_back=False
            )
        finally:
            monitor.unwatch(holder)  # no watch, no thread stays behind: the client renews
        left = ttl * (1 - CLOCK_DRIFT) - (monitor.clock() - sent)
        return jsonify(token=token, owner=owner, ttl=ttl, holder=holder, expires_in=left)

    @bp.route(LOCK_RENEW_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def renew() -> Response:
        body = body_object({"name", "token"}, set())
        name, token = check_name(body["name"]), check_token(body["token"])
        running_status()
        sent = time.monotonic()
        renewed = node.state(LockTable).renew(name, token)
        ttl = float(renewed["ttl"])
        left = ttl * (1 - CLOCK_DRIFT) - (time.monotonic() - sent)
        return jsonify(token=token, ttl=ttl, expires_in=left)

    @bp.route(LOCK_RELEASE_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def release() -> Response:
        body = body_object({"name", "token"}, {"request_id"})
        name, token = check_name(body["name"]), check_token(body["token"])
        request_id = body.get("request_id")
        running_status()
        table = node.state(LockTable)
        if request_id is not None:  # a retried release applies once
            if not isinstance(request_id, str):
                raise _bad('"request_id" must be a string')
            table = table.with_request_id(f"lock-release:{request_id}")
        table.release(name, token)
        return jsonify(released=True, token=token)

    @bp.route(LOCK_CANCEL_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def cancel() -> Response:
        # The client gave up on an acquire (failed, timed out, interrupted): its holder leaves
        # the queue, or gives back a grant that came too late. Cancelling twice is harmless.
        body = body_object({"name", "holder"}, set())
        name, holder = check_name(body["name"]), check_holder(body["holder"])
        running_status()
        node.state(LockTable).cancel(name, holder)
        return jsonify(cancelled=True)

    _install_error_handlers(bp, lambda: node.status.leader_endpoint)
    return bp


# -- parsing ---------------------------------------------------------------------------------


def _method(*allowed: str) -> None:
    if request.method not in allowed:
        raise _Answer(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}.",
            _headers={"Allow": ", ".join(allowed)},
        )


def _bad(message: str, code: str = "bad_request") -> _Answer:
    return _Answer(400, code, message)


def _int_arg(name: str, default: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        raise _bad(f"?{name}= must be a whole number, not {text!r}") from None
    if not -1 <= value < 1 << 62:
        raise _bad(f"?{name}= must be from -1 to 2**62, not {value}")
    return value


def _float_arg(name: str, default: float, limit: float) -> float:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise _bad(f"?{name}= must be a number of seconds, not {text!r}") from None
    if not 0 <= value <= limit:  # NaN fails too
        raise _bad(f"?{name}= must be from 0 to {limit:g} seconds, not {text}")
    return value


def _timeout(body: dict[str, Any]) -> float | None:
    value = body.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f'"timeout" must be a number of seconds, not {value!r}')
    if not 0 < value <= MAX_TIMEOUT:
        raise _bad(f'"timeout" must be above 0 and at most {MAX_TIMEOUT:g} seconds, not {value}')
    return float(value)


def _command_entry(node: NodeHandle, encoded: object) -> tuple[bytes, str | None]:
    """The command entry a client sent (base64 of :func:`~catga_sync.fsm.encode_command`'s
    bytes), checked field by field and stamped with this node's clock; and its request id."""
    if not isinstance(encoded, str):
        raise _bad('"command" must be a base64 string', "invalid_command")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _bad('"command" is not valid base64', "invalid_command") from None
    entry = parse_json(raw, shape="a command entry (catga_sync.fsm.encode_command)")
    if not isinstance(entry, dict):
        raise _bad("the command must be a JSON object", "invalid_command")
    unknown = sorted(set(entry) - set(_COMMAND_KEYS) - _SESSION_KEYS - {"t"})
    if unknown:
        raise _bad(f"the command has unknown fields {unknown}", "invalid_command")
    for key, kind in _COMMAND_KEYS.items():
        if not isinstance(entry.get(key), kind):
            raise _bad(
                f"the command's {key!r} must be a {kind.__name__}: {entry.get(key)!r}",
                "invalid_command",
            )
    client, seq, ack = entry.get("c"), entry.get("s"), entry.get("ack")
    if "c" in entry or "s" in entry:
        if not isinstance(client, str) or not 0 < len(client) <= 200:
            raise _bad("the command's client id must be 1 to 200 characters", "invalid_command")
        if not _natural(seq) or not (ack is None or _natural(ack)):
            raise _bad("the command's seq and ack must be whole numbers", "invalid_command")
    machine = node.state_machines.machines.get(entry["m"])
    if machine is None or entry["op"] not in type(machine).commands():
        raise _bad(
            f"no command {entry['m']}.{entry['op']} is registered on node {node.node_id}",
            "unknown_command",
        )
    entry["t"] = time.time()  # the entry time is the cluster's clock, never a client's
    data = json.dumps(entry, separators=(",", ":"), allow_nan=False).encode()
    return data, None if client is None else f"{client}#{seq}"


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _run_query(query: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Outcome:
    """Run a query on the Raft loop; what it raises is its outcome, as a command's is."""
    try:
        result = query(*args, **kwargs)
        json.dumps(result, allow_nan=False)
    except Exception as exc:
        return Outcome(error_type=error_type_name(exc), error_message=str(exc))
    return Outcome(result=result)


# -- errors as JSON --------------------------------------------------------------------------


def _install_error_handlers(bp: Blueprint, leader: Callable[[], str | None]) -> None:
    @bp.errorhandler(_Answer)
    def on_answer(exc: _Answer) -> tuple[Response, int]:
        extra = dict(exc.extra)
        headers = extra.pop("_headers", {})
        return _reply(exc.status, exc.code, str(exc), headers, **extra)

    @bp.errorhandler(RequestBodyError)
    def on_bad_body(exc: RequestBodyError) -> tuple[Response, int]:
        return _reply(exc.status, exc.code, str(exc), exc.headers)

    @bp.errorhandler(CatgaError)
    def on_cluster_error(exc: CatgaError) -> tuple[Response, int]:
        return _cluster_error(exc, leader())

    @bp.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> tuple[Response, int]:
        logger.exception("client request %s %s failed", request.method, request.path)
        return _reply(
            500, "internal_error", f"The node failed ({type(exc).__name__}); see its log.", {}
        )


def _cluster_error(exc: CatgaError, leader: str | None) -> tuple[Response, int]:
    """The answer to an error of the cluster: 409 for a lock not acquired or not held, 400 for
    a bad lock request, else a 503 to retry (naming the leader this node knows)."""
    if isinstance(exc, LockNotAcquiredError):
        return _reply(409, "lock_not_acquired", str(exc), {})
    if isinstance(exc, LockNotHeldError):
        return _reply(409, "lock_not_held", str(exc), {})
    if isinstance(exc, InvalidLockRequestError):
        return _reply(400, "invalid_lock_request", str(exc), {})
    retry = {"Retry-After": "1"}
    if isinstance(exc, NotLeaderError):
        code = "no_leader" if isinstance(exc, NoLeaderError) else "not_leader"
        return _reply(503, code, str(exc), retry, leader=exc.leader_endpoint or leader)
    if isinstance(exc, CommitTimeoutError):
        return _reply(
            503, "commit_timeout", str(exc), retry, leader=leader, request_id=exc.request_id
        )
    return _reply(503, "unavailable", f"{type(exc).__name__}: {exc}", retry, leader=leader)


def _reply(
    status: int, code: str, message: str, headers: dict[str, str], **extra: Any
) -> tuple[Response, int]:
    response = jsonify(error=code, message=message, **extra)
    response.headers.update(headers)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="catga client API"'
    return response, status
