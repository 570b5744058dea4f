"""The example OrderSystem of the Catga guide, as a Flask app joined to a catga_sync cluster.

The orders live in a replicated :class:`~example_flask.orders.Orders` state machine, so every
node holds them and any node answers: a write on a follower is forwarded to the leader and
answered once it is applied on the node that took the request; reads are linearizable.

Run three nodes: ``example_flask/run-cluster.sh``, or by hand in three terminals:
``python -m example_flask --cluster --port 5000 --node-id node0`` (and 5001/node1, 5002/node2).

Routes (every answer is JSON; errors are ``{"error": code, "message": text}``):

- ``POST /orders`` ``{"customer": str, "amount": number}`` → 201 with the order. An
  ``Idempotency-Key`` header makes it exactly-once: a repeat, on any node, returns the same
  order (201 again) and creates nothing.
- ``GET /orders/<id>`` → 200 or 404; ``GET /orders`` → ``{"orders": [...]}``.
- ``PATCH /orders/<id>`` ``{"status": str, "expected_version": int}`` → 200 with the new
  version; 409 with ``current_version`` when ``expected_version`` is stale; 404 when unknown.
- ``POST /orders/<id>/ship`` → 200 with the shipped order: the guide's flow, a ``ShipOrder``
  command sent through the mediator with ``ForwardToLeaderBehavior`` (honours
  ``Idempotency-Key`` too); 409 when the order cannot ship.
- ``GET /outbox``: what the OutboxProcessor (a singleton task on the leader) processed, with
  the fencing token of each; ``GET /report``: the leader-gated report job's last report.
- ``POST /locks/<name>`` ``{"ttl": s, "wait": s, "owner": str}`` → 200 ``{"token", "owner",
  "expires_in"}`` or 409 when not acquired within ``wait``; ``DELETE /locks/<name>``
  ``{"token": int}`` → 200, or 409 when that token no longer holds it; ``GET /locks/<name>``
  → the holder and its waiters, or 404. A lock taken over HTTP is not renewed: it frees itself
  ``ttl`` seconds after its grant unless released first.
- 400 for a bad body, 413 for one over 16 KiB, 415 without ``Content-Type: application/json``
  (nothing is applied; :mod:`catga_sync.web.bodies`); 503 with ``Retry-After`` while the
  cluster cannot take the request (no leader, no quorum, or the outcome is unknown — then retry
  with the same ``Idempotency-Key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from catga_sync import locks
from catga_sync.config import ClusterConfig
from catga_sync.errors import (
    CatgaError,
    CommitTimeoutError,
    InvalidLockRequestError,
    LockNotAcquiredError,
    LockNotHeldError,
    NoLeaderError,
    NotLeaderError,
    RequestBodyError,
)
from catga_sync.forwarding import ForwardToLeaderBehavior, IdempotencyKeyReusedError
from catga_sync.fsm import CommandError, RequestExpiredError, UnknownCommandError
from catga_sync.mediator import Mediator, Next
from catga_sync.state import StateHandle
from catga_sync.web.bodies import json_body
from catga_sync.web.extension import CatgaCluster

from . import background, fires
from .orders import (
    CannotShip,
    InvalidOrder,
    OrderNotFound,
    Orders,
    VersionConflict,
    check_amount,
    check_customer,
    check_status,
    check_version,
)

__all__ = ["ShipOrder", "cluster", "create_app", "mediator", "orders_blueprint"]

MAX_BODY_BYTES = 16 << 10
"""Order bodies are a few dozen bytes; anything this large is a mistake or an attack."""

MAX_IDEMPOTENCY_KEY_CHARS = 200
DEFAULT_LOCK_TTL = 30.0
RETRY_AFTER_SECONDS = "1"
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")

T = TypeVar("T")

mediator = Mediator()
"""The OrderSystem's mediator commands (ShipOrder); the node's forwarding endpoint runs them."""

cluster = CatgaCluster(state_machines=[Orders], mediator=mediator)
"""Used by :func:`create_app` when it is given no ClusterConfig (``CATGA_CLUSTER_*`` keys,
else ``Cluster__*`` variables)."""

FORWARD_KEY = "example_flask.forward_to_leader"


class ApiError(CatgaError):
    """Ends a request with a JSON error: raised in the views, answered by the handler."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


def create_app(config: ClusterConfig | None = None, **flask_config: Any) -> Flask:
    """The app factory: unless a ClusterConfig is given, the extension reads each setting
    from a ``CATGA_CLUSTER_*`` key, else from the guide's ``Cluster__*`` environment variable
    (``gunicorn 'example_flask:create_app()'``, ``example_flask/gunicorn.conf.py``)."""
    app = Flask(__name__)
    app.config.update(flask_config)
    if config is not None:
        CatgaCluster(app, config=config, state_machines=[Orders], mediator=mediator)
    else:
        cluster.init_app(app)
    node = CatgaCluster.state_of(app).node
    app.extensions[FORWARD_KEY] = ForwardToLeaderBehavior(node)
    if app.config.get("EXAMPLE_BACKGROUND", True):
        background.install(node, app)  # the OutboxProcessor and the report job: leader only
        fires.install(node, app.config)  # a job's fire times in a SQL table (EXAMPLE_FIRES_URL)
    app.register_blueprint(orders_blueprint)
    # Routing errors (unknown path, wrong method) never reach a blueprint's handlers.
    app.register_error_handler(HTTPException, _http_error)

    @app.after_request
    def served_by(response: Response) -> Response:
        # Which process answered: under gunicorn -w N, any worker serves any route.
        response.headers["X-Served-By"] = f"{node.node_id}/{os.getpid()}"
        return response

    @app.get("/")
    def index() -> Any:
        coordinator = CatgaCluster.state_of().node.coordinator
        return jsonify(
            service="example_flask OrderSystem",
            node_id=coordinator.node_id,
            is_leader=coordinator.is_leader,
            leader=coordinator.leader_endpoint,
            see=[
                "/orders",
                "/outbox",
                "/report",
                "/locks/<name>",
                "/cluster",
                "/health",
                "/livez",
                "/readyz",
                "/metrics",
            ],
        )

    return app


# -- the OrderSystem routes ------------------------------------------------------------------

orders_blueprint = Blueprint("orders", __name__)


def orders() -> StateHandle[Orders]:
    """The replicated orders, through the current app's node."""
    return CatgaCluster.state_of().node.state(Orders)


@orders_blueprint.post("/orders")
def create_order() -> tuple[Response, int]:
    body = _json_object({"customer", "amount"})
    customer = _checked(check_customer, body["customer"])
    amount = _checked(check_amount, body["amount"])
    key = _idempotency_key()
    handle = orders()
    if key is not None:
        handle = handle.with_request_id(_request_id("create", key))
    # Without a key the handle's own session still makes its internal retries (a lost answer,
    # a leader change) exactly-once; the key extends that to the client's own retries.
    with _retry_hint(key):
        order = handle.create(customer, amount)
    return jsonify(order), 201


@orders_blueprint.get("/orders")
def list_orders() -> Response:
    return jsonify(orders=orders().all_orders())


@orders_blueprint.get("/outbox")
def outbox() -> Response:
    """What the OutboxProcessor did: ``{"fence", "processed": [{"order_id", "fencing_token"}],
    "pending": [ids]}`` (linearizable)."""
    return jsonify(orders().outbox())


@orders_blueprint.get("/report")
def report() -> tuple[Response, int]:
    """The report job's last report, or 404 while it has not run yet."""
    last = orders().report()
    if last is None:
        return _error(404, "no_report", "The report job has not run yet.")
    return jsonify(last), 200


@orders_blueprint.get("/orders/<order_id>")
def get_order(order_id: str) -> Response:
    order = orders().get(order_id)
    if order is None:
        raise OrderNotFound.for_id(order_id)
    return jsonify(order)


@orders_blueprint.patch("/orders/<order_id>")
def update_order(order_id: str) -> Response:
    body = _json_object({"status", "expected_version"})
    status = _checked(check_status, body["status"])
    expected = _checked(check_version, body["expected_version"])
    key = _idempotency_key()
    handle = orders()
    if key is not None:
        handle = handle.with_request_id(_request_id(f"update:{order_id}", key))
    # The version is compared inside the replicated command: the log orders racing updates.
    with _retry_hint(key):
        order = handle.update(order_id, status, expected)
    return jsonify(order)


# -- the guide's flow: a command through the mediator, forwarded to the leader ------------------
#
# ShipOrder is a mediator command. On a follower, ForwardToLeaderBehavior sends it to the
# leader's POST /_catga/forward; the leader runs the handler, at most once per idempotency key,
# and the result (or the handler's error, same type and message) comes back.


@mediator.command("orders.ship")
@dataclass(frozen=True)
class ShipOrder:
    order_id: str


@mediator.handler(ShipOrder)
def ship(command: ShipOrder) -> dict[str, Any]:
    """Runs on the leader (the behavior sent it there)."""
    result: dict[str, Any] = orders().ship(command.order_id)
    return result


def forward_to_leader(command: Any, next_: Next) -> Any:
    """The current app's ForwardToLeaderBehavior: this module's one mediator serves every app
    create_app makes (tests make several), and each app has its own node."""
    behavior: ForwardToLeaderBehavior = current_app.extensions[FORWARD_KEY]
    return behavior(command, next_)


mediator.add_behavior(forward_to_leader, for_=ShipOrder)


@orders_blueprint.post("/orders/<order_id>/ship")
def ship_order(order_id: str) -> Response:
    if request.content_length:
        raise ApiError(400, "invalid_body", "POST /orders/<id>/ship takes no body.")
    key = _idempotency_key()
    with _retry_hint(key):
        order = mediator.send(ShipOrder(order_id), idempotency_key=key)
    return jsonify(order)


# -- locks: the guide's distributed lock, replicated and fenced ---------------------------------
#
# A lock taken over HTTP belongs to the HTTP client: nothing renews it, so it frees itself
# ``ttl`` seconds after the grant unless the client releases it first (with its token).


@orders_blueprint.post("/locks/<path:name>")
def acquire_lock(name: str) -> Response:
    """``{"ttl": seconds, "wait": seconds, "owner": str}`` (all optional: 30, 0, the client's
    address) -> 200 ``{"token", "owner", "expires_in"}``, or 409 when not acquired in time."""
    body = _json_object(set(), frozenset({"ttl", "wait", "owner"}))
    ttl = body.get("ttl", DEFAULT_LOCK_TTL)
    wait = body.get("wait", 0)
    owner = body.get("owner", f"http:{request.remote_addr or 'client'}")
    lease = locks.acquire(
        CatgaCluster.state_of().node, name, ttl=ttl, timeout=wait, owner=owner, auto_renew=False
    )
    return jsonify(token=lease.token, owner=lease.owner, expires_in=round(lease.remaining(), 3))


@orders_blueprint.delete("/locks/<path:name>")
def release_lock(name: str) -> Response:
    """``{"token": int}`` -> 200 ``{"released": true, "token"}``, or 409 when that token no
    longer holds the lock (released already, expired, or never granted)."""
    body = _json_object({"token"})
    locks.check_name(name)
    token = locks.check_token(body["token"])
    CatgaCluster.state_of().node.state(locks.LockTable).release(name, token)
    return jsonify(released=True, token=token)


@orders_blueprint.get("/locks/<path:name>")
def describe_lock(name: str) -> tuple[Response, int]:
    """The lock's holder, token and waiters (linearizable), or 404 when nobody holds it."""
    locks.check_name(name)
    lock = CatgaCluster.state_of().node.state(locks.LockTable).describe(name)
    if lock is None:
        return _error(404, "not_held", f"Nobody holds lock {name!r}.")
    return jsonify(lock), 200


# -- request parsing ---------------------------------------------------------------------------


def _json_object(keys: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The request body as a JSON object with exactly ``keys`` (and any of ``optional``), or
    a 400/413/415 error (catga_sync.web.bodies: JSON only, strictly parsed, within the limit,
    and a 413 the client sees)."""
    expected = ", ".join(f'"{k}"' for k in sorted(keys))
    if optional:
        expected += " (optional: " + ", ".join(f'"{k}"' for k in sorted(optional)) + ")"
    body = json_body(MAX_BODY_BYTES, shape=f"a JSON object with the keys {expected}")
    if not isinstance(body, dict):
        raise ApiError(
            400, "invalid_body", f"The body must be a JSON object with the keys {expected}."
        )
    if not keys <= set(body) <= keys | optional:
        missing, extra = sorted(keys - set(body)), sorted(set(body) - keys - optional)
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unexpected {', '.join(extra)}"] if extra else []
        raise ApiError(
            400,
            "invalid_body",
            f"The body must have exactly the keys {expected} ({'; '.join(problems)}).",
        )
    return body


def _checked(check: Callable[[object], T], value: object) -> T:
    try:
        return check(value)
    except InvalidOrder as exc:
        raise ApiError(400, "invalid_order", str(exc)) from None


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _PRINTABLE_ASCII.fullmatch(key) or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII "
            "characters; use a fresh UUID per operation.",
        )
    return key


def _request_id(operation: str, key: str) -> str:
    """The cluster-wide request id of ``key`` for ``operation``: a key reused on another
    route is another request. Hashed so that no key can look like an internal ``client#seq``."""
    return f"orders.{operation}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


@contextlib.contextmanager
def _retry_hint(key: str | None) -> Iterator[None]:
    """Turns a CommitTimeoutError into a 503 that says how to retry safely."""
    try:
        yield
    except CommitTimeoutError as exc:
        if key is None:
            raise ApiError(
                503,
                "commit_timeout",
                "The outcome of this request is unknown: the cluster did not apply it in time. "
                "It may still be applied; look before you retry (GET /orders), and send an "
                "Idempotency-Key header to make retries safe.",
                request_id=exc.request_id,
            ) from exc
        raise ApiError(
            503,
            "commit_timeout",
            "The outcome of this request is unknown: the cluster did not apply it in time. "
            f"Retry it with the header Idempotency-Key: {key} (it runs at most once).",
            request_id=key,
        ) from exc


# -- errors as JSON ------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    response = jsonify(error=code, message=message, **extra)
    if status == 503:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response, status


@orders_blueprint.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response, int]:
    return _error(exc.status, exc.code, str(exc), **exc.extra)


@orders_blueprint.errorhandler(RequestBodyError)
def _bad_body(exc: RequestBodyError) -> tuple[Response, int]:
    response, status = _error(exc.status, exc.code, str(exc))
    response.headers.update(exc.headers)
    return response, status


@orders_blueprint.errorhandler(OrderNotFound)
def _not_found(exc: OrderNotFound) -> tuple[Response, int]:
    return _error(404, "not_found", str(exc))


@orders_blueprint.errorhandler(VersionConflict)
def _conflict(exc: VersionConflict) -> tuple[Response, int]:
    return _error(409, "version_conflict", str(exc), current_version=exc.current_version)


@orders_blueprint.errorhandler(CannotShip)
def _cannot_ship(exc: CannotShip) -> tuple[Response, int]:
    return _error(409, "cannot_ship", str(exc))


@orders_blueprint.errorhandler(IdempotencyKeyReusedError)
def _key_reused(exc: IdempotencyKeyReusedError) -> tuple[Response, int]:
    return _error(422, "idempotency_key_reused", str(exc))


@orders_blueprint.errorhandler(InvalidOrder)
def _invalid(exc: InvalidOrder) -> tuple[Response, int]:
    return _error(400, "invalid_order", str(exc))


@orders_blueprint.errorhandler(RequestExpiredError)
def _expired(exc: RequestExpiredError) -> tuple[Response, int]:
    return _error(409, "request_expired", f"{exc} Use a new Idempotency-Key.")


@orders_blueprint.errorhandler(NotLeaderError)
def _not_leader(exc: NotLeaderError) -> tuple[Response, int]:
    code = "no_leader" if isinstance(exc, NoLeaderError) else "not_leader"
    return _error(503, code, str(exc), leader=exc.leader_endpoint)


@orders_blueprint.errorhandler(CommitTimeoutError)
def _timeout(exc: CommitTimeoutError) -> tuple[Response, int]:
    return _error(503, "commit_timeout", str(exc), request_id=exc.request_id)


@orders_blueprint.errorhandler(InvalidLockRequestError)
def _invalid_lock(exc: InvalidLockRequestError) -> tuple[Response, int]:
    return _error(400, "invalid_lock_request", str(exc))


@orders_blueprint.errorhandler(LockNotAcquiredError)
def _not_acquired(exc: LockNotAcquiredError) -> tuple[Response, int]:
    return _error(409, "lock_not_acquired", str(exc))


@orders_blueprint.errorhandler(LockNotHeldError)
def _not_held(exc: LockNotHeldError) -> tuple[Response, int]:
    return _error(409, "lock_not_held", str(exc))


@orders_blueprint.errorhandler(CommandError)
@orders_blueprint.errorhandler(UnknownCommandError)
def _bug(exc: CatgaError) -> tuple[Response, int]:
    # The nodes disagree on their code (an error type or command one of them lacks).
    return _error(500, "internal_error", str(exc))


@orders_blueprint.errorhandler(CatgaError)
def _unavailable(exc: CatgaError) -> tuple[Response, int]:
    # Anything else from the cluster (a node that is stopping, a forwarding failure): the
    # request can be retried on this or another node.
    return _error(503, "unavailable", str(exc))


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    response, status = _error(
        exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or ""
    )
    allow = exc.get_response().headers.get("Allow")
    if allow:  # a 405 says which methods would do
        response.headers["Allow"] = allow
    return response, status
