"""The peer RPC endpoint: ``POST {url_prefix}/raft`` takes a batch of Raft messages from a peer.

A request is read within a size limit, authenticated (when a cluster secret is set), decoded and
checked as a whole before anything reaches the node; any problem is answered with a JSON error
and the node's state is untouched. Wire format and status codes: ``docs/transport.rst``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from ..errors import (
    CatgaError,
    CommitTimeoutError,
    ConfigError,
    NotLeaderError,
    PeerAuthError,
    ProposalDroppedError,
)
from ..transport.arrival import MAX_WAIT, ArrivalOrder
from ..transport.base import PeerReceiver, ProposalReceiver
from ..transport.frames import FRAMES_CONTENT_TYPE, HEADER_FRAMES
from ..transport.proposals import PROPOSE_PATH, decode_proposal, outcome_json
from ..transport.signing import ReplayGuard, reply_headers, verify
from ..transport.wire import (
    DEFAULT_URL_PREFIX,
    HEADER_NODE,
    HEADER_REPLY,
    HEADER_SENDER,
    HEADER_SIGNATURE,
    HEADER_STREAM,
    HEADER_TIMESTAMP,
    INFO_PATH,
    INLINE_REPLY,
    MAX_NODE_NAME_LENGTH,
    PROTOCOL_VERSION,
    RAFT_PATH,
    WireFormatError,
    check_addressing,
    decode_batch,
    encode_batch,
    normalize_url_prefix,
)
from .admin import AdminNode, register_admin_routes
from .peer_frames import Exchange, PeerHeaders, frames_offered, open_frames

logger = logging.getLogger(__name__)

INLINE_REPLY_WAIT = 0.05
"""Seconds a peer request asking for an inline reply waits for the Raft loop (normally about
one fsync). Past it the request is answered empty and the replies leave as our own requests,
well before the sender's timeout (the election timeout, 100 ms at the least)."""

# Every common method is routed to the views so a wrong one gets our JSON 405, not Werkzeug's
# HTML page (a blueprint's error handlers never see routing errors).
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_READ_CHUNK = 64 << 10
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


class _Refusal(CatgaError):
    """Ends a peer request with a JSON error; raised in the views, answered by the handler."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


class PeerGate:
    """The checks every peer route makes before it acts, and its JSON error answers: the
    method, the size limit, then the signature (with a secret) or the sender header (without
    one). Shared by the peer RPC, the proposal and the forwarding endpoints."""

    def __init__(self, *, secret: str | None, max_body_bytes: int, signature_window: float) -> None:
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be at least 1, not {max_body_bytes}")
        if not signature_window > 0:
            raise ConfigError(
                f"signature_window must be a positive number of seconds, not {signature_window}"
            )
        self.secret = secret or None
        self.max_body_bytes = max_body_bytes
        self.signature_window = signature_window
        self._replays = ReplayGuard(signature_window) if self.secret is not None else None
        self.rejections = _RejectionLog()

    def body(self, methods: tuple[str, ...] = ("POST",)) -> tuple[bytes, str]:
        """The request body and its sender, once the method, the size, the signature and the
        sender are checked (the same checks for every peer route)."""
        if request.method not in methods:
            _method_not_allowed(", ".join(methods))
        body = _read_body(self.max_body_bytes)
        return body, self.sender(request.headers, request.method, _signed_path(), body)

    def sender(self, headers: PeerHeaders, method: str, path: str, body: bytes) -> str:
        """The sender of a request (or of a frame: :mod:`catga_sync.transport.frames`) with
        ``headers`` and ``body``, once its signature or its sender header is checked."""
        sender = headers.get(HEADER_SENDER, "")
        if self.secret is not None and self._replays is not None:
            now = time.time()
            auth = _auth_headers(headers)
            verify(self.secret, method, path, body, auth, now, self.signature_window)
            self._replays.check(auth[HEADER_SIGNATURE], float(auth[HEADER_TIMESTAMP]), now)
        elif not sender:
            raise _Refusal(
                400,
                "missing_sender",
                f"The {HEADER_SENDER} header is missing; it must hold the sending node's Raft id "
                "(its normalized endpoint, such as http://node1:5000).",
            )
        return sender

    @staticmethod
    def refuse(status: int, code: str, message: str) -> NoReturn:
        raise _Refusal(status, code, message)

    def refusal(self, exc: Exception) -> tuple[int, dict[str, str], bytes]:
        """What a request failing with ``exc`` is answered, for a frame: (status, headers,
        JSON body), logged as the error handlers log it."""
        status, code, message, headers = _describe(exc, self.max_body_bytes)
        self.rejections.log(status, code, message)
        body = json.dumps({"error": code, "message": message}).encode()
        return status, {**headers, "Content-Type": "application/json"}, body

    @staticmethod
    def not_running() -> NoReturn:
        raise _Refusal(
            503,
            "not_running",
            "This node is not running (not started yet, or stopping). Peers retry on their "
            "own; if this lasts, check that the node was started and look at its log.",
            {"Retry-After": "1"},
        )

    def install_error_handlers(self, bp: Blueprint) -> None:
        """Answer every refusal and failure of ``bp``'s routes as JSON (only those routes:
        the application's own handlers are untouched)."""
        rejections = self.rejections
        max_body_bytes = self.max_body_bytes

        @bp.errorhandler(Exception)
        def on_error(exc: Exception) -> Response:
            return rejections.reply(*_describe(exc, max_body_bytes))


def _describe(exc: Exception, max_body_bytes: int) -> tuple[int, str, str, dict[str, str]]:
    """A peer request's failure as (status, code, message, headers) of its JSON answer."""
    if isinstance(exc, _Refusal):
        return exc.status, exc.code, str(exc), exc.headers
    if isinstance(exc, WireFormatError):
        return 400, exc.code, str(exc), {}
    if isinstance(exc, PeerAuthError):
        headers = {"WWW-Authenticate": 'CatgaHMAC realm="catga peer API"'}
        return 401, "unauthorized", str(exc), headers
    if isinstance(exc, RequestEntityTooLarge):
        message = (
            f"The request body exceeds this node's limit of {max_body_bytes} bytes. Give every "
            "node the same limit (max_message_bytes); senders split their batches to stay "
            "below it."
        )
        return 413, "payload_too_large", message, {}
    if isinstance(exc, HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return exc.code or 500, code, exc.description or exc.name or "error", {}
    logger.exception("Peer RPC failed unexpectedly; nothing was delivered", exc_info=exc)
    message = f"The node failed to take the request ({type(exc).__name__}); see its log."
    return 500, "internal_error", message, {}


def create_peer_blueprint(
    get_receiver: Callable[[], PeerReceiver | None],
    *,
    secret: str | None,
    max_body_bytes: int,
    signature_window: float,
    url_prefix: str = DEFAULT_URL_PREFIX,
    name: str = "catga_peer",
    admin: Callable[[], AdminNode | None] | None = None,
    arrival_wait: float = MAX_WAIT,
) -> Blueprint:
    """A blueprint serving the peer RPC for the node ``get_receiver()`` returns.

    ``get_receiver`` is called on every request (None means the node is not running: 503).
    With ``admin``, the blueprint also serves the admin routes (:mod:`catga_sync.web.admin`)
    for the node it returns. ``arrival_wait``: seconds a pipelined request waits at most for
    the ones its sender sent before it (:mod:`catga_sync.transport.arrival`).
    Without a ``secret`` (None or empty) requests are not authenticated, and a warning says so.
    """
    gate = PeerGate(secret=secret, max_body_bytes=max_body_bytes, signature_window=signature_window)
    prefix = normalize_url_prefix(url_prefix)
    if gate.secret is None:
        logger.warning(
            "The peer API at %s%s is open: no cluster secret is set, so anyone who can reach "
            "this port can send Raft messages and take over the cluster. Set the same secret "
            "on every node (CATGA_CLUSTER_SECRET in Flask config, Cluster__Secret in the "
            "environment, or --secret).",
            prefix,
            RAFT_PATH,
        )
    bp = Blueprint(name, __name__, url_prefix=prefix or None)
    arrivals = ArrivalOrder()

    def receiver_or_503() -> PeerReceiver:
        receiver = get_receiver()
        if receiver is None:
            gate.not_running()
        return receiver

    def exchange(
        headers: PeerHeaders, body: bytes, path: str, sender: str
    ) -> tuple[int, dict[str, str], bytes]:
        """Deliver one checked request's (or frame's) messages: (status, headers, body)."""
        sender_name = _sender_name(headers)
        receiver = receiver_or_503()
        messages = decode_batch(body)
        check_addressing(messages, sender=sender, receiver=receiver.raft_id)
        # A pipelining sender's requests are queued in the order it sent them (.arrival).
        turn = arrivals.turn(sender, headers.get(HEADER_STREAM))
        turn.wait(arrival_wait)
        # The InlineReplyReceiver port, but not isinstance() on the Protocol: on every
        # heartbeat that cost more than the check.
        receive_and_reply = getattr(receiver, "receive_and_reply", None)
        if headers.get(HEADER_REPLY) == INLINE_REPLY and receive_and_reply is not None:
            with turn:
                if turn.ordered:  # the next request of the stream may go once these are queued
                    replies = receive_and_reply(
                        messages, sender_name, INLINE_REPLY_WAIT, queued=turn.release
                    )
                else:  # as before pipelining: a receiver need not know ``queued``
                    replies = receive_and_reply(messages, sender_name, INLINE_REPLY_WAIT)
            answer = encode_batch(replies)
            signature = headers.get(HEADER_SIGNATURE, "")
            signed = reply_headers(
                gate.secret, path, signature, answer, receiver.raft_id, time.time()
            )
            return 200, {**signed, "Content-Type": "application/json"}, answer
        with turn:
            if messages:
                receiver.receive(messages, sender_name)
        # Built by hand: jsonify costs a tenth of a peer POST, and this is every heartbeat.
        return 202, {"Content-Type": "application/json"}, b'{"accepted":%d}' % len(messages)

    def propose_exchange(
        headers: PeerHeaders, body: bytes, path: str, sender: str
    ) -> tuple[int, dict[str, str], bytes]:
        """Propose one checked request's (or frame's) entry and wait for its outcome."""
        receiver = receiver_or_503()
        data, timeout = decode_proposal(body)
        if not isinstance(receiver, ProposalReceiver):
            raise _Refusal(501, "not_supported", "This node does not take forwarded proposals.")
        try:
            index, term, outcome = receiver.propose_forwarded(data, timeout=timeout)
        except NotLeaderError as exc:
            leader = exc.leader_endpoint or exc.leader_id
            return _json(409, error="not_leader", message=str(exc), leader=leader)
        except CommitTimeoutError as exc:
            return _json(504, error="commit_timeout", message=str(exc))
        except ProposalDroppedError as exc:
            return _json(409, error="proposal_dropped", message=str(exc))
        return _json(200, index=index, term=term, outcome=outcome_json(outcome))

    def framed_or_one(deliver: Exchange) -> tuple[Response, int]:
        """A framed POST's stream of answers, or the answer to one request."""
        if request.mimetype == FRAMES_CONTENT_TYPE and request.method == "POST":
            return open_frames(gate, deliver, _signed_path()), 200
        body, sender = gate.body()
        status, headers, answer = deliver(request.headers, body, _signed_path(), sender)
        if frames_offered():
            headers[HEADER_FRAMES] = "1"
        return Response(answer, status, headers), status

    @bp.route(RAFT_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def raft() -> tuple[Response, int]:
        return framed_or_one(exchange)

    @bp.route(PROPOSE_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def propose() -> tuple[Response, int]:
        return framed_or_one(propose_exchange)

    @bp.route(INFO_PATH, methods=_ALL_METHODS, provide_automatic_options=False)
    def raft_info() -> tuple[Response, int]:
        if request.method not in ("GET", "HEAD"):
            _method_not_allowed("GET, HEAD")
        receiver = receiver_or_503()
        return jsonify(raft_id=receiver.raft_id, protocol=PROTOCOL_VERSION), 200

    if admin is not None:
        register_admin_routes(bp, gate.body, admin)
    gate.install_error_handlers(bp)
    return bp


def _json(status: int, **fields: object) -> tuple[int, dict[str, str], bytes]:
    # The app's JSON provider, as jsonify: an outcome may hold dates, decimals, dataclasses.
    body = current_app.json.dumps(fields).encode()
    return status, {"Content-Type": "application/json"}, body


def _method_not_allowed(allowed: str) -> NoReturn:
    raise _Refusal(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed on {request.path}; use {allowed}.",
        {"Allow": allowed},
    )


def _read_body(limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise RequestEntityTooLarge()  # decided from Content-Length, before reading anything
    # Our own limit, not the application's MAX_CONTENT_LENGTH. A chunked body is readable only
    # when the server dechunks it (``wsgi.input_terminated``); otherwise it reads as empty.
    stream = get_input_stream(request.environ, max_content_length=limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge()
    return b"".join(chunks)


def _signed_path() -> str:
    # The path the sender put in its URL: the mount point (SCRIPT_NAME) and the route.
    return request.script_root + request.path


def _auth_headers(headers: PeerHeaders) -> dict[str, str]:
    # The first value of each signed header (what ``headers.get`` and the signer agree on).
    found = {}
    for name in (HEADER_SENDER, HEADER_TIMESTAMP, HEADER_SIGNATURE):
        value = headers.get(name)
        if value is not None:
            found[name] = value
    return found


def _sender_name(headers: PeerHeaders) -> str | None:
    name = headers.get(HEADER_NODE)
    if name is None or name == "":
        return None
    if len(name) > MAX_NODE_NAME_LENGTH or not _PRINTABLE_ASCII.fullmatch(name):
        raise _Refusal(
            400,
            "bad_header",
            f"The {HEADER_NODE} header must be 1 to {MAX_NODE_NAME_LENGTH} printable ASCII "
            "characters (the sending node's name).",
        )
    return name


class _RejectionLog:
    """Builds error replies and logs them: DEBUG each, WARNING at most once a minute per cause.

    A misconfigured peer (wrong secret, wrong members list) retries many times a second; one
    warning tells the operator, a thousand would bury the log.
    """

    INTERVAL = 60.0

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def reply(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        self.log(status, code, message)
        response = jsonify(error=code, message=message)
        response.status_code = status
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    def log(self, status: int, code: str, message: str) -> None:
        """Log a refusal: a 4xx the client could fix (a 405 and a 5xx are not logged here)."""
        if not 400 <= status < 500 or status == 405:
            return
        remote = request.remote_addr or "?"
        logger.debug("Refused peer request from %s: %d %s: %s", remote, status, code, message)
        now = time.monotonic()
        cause = (code, remote)
        with self._lock:
            if now - self._last.get(cause, -self.INTERVAL) < self.INTERVAL:
                return
            if len(self._last) > 1000:
                self._last.clear()
            self._last[cause] = now
        logger.warning("Refused a peer request from %s (%d %s): %s", remote, status, code, message)
