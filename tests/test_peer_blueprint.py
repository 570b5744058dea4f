"""The peer RPC blueprint, through Flask's test client and over real sockets.

Every refused request must answer with the right status and a JSON ``{"error", "message"}``
body, and deliver nothing to the node.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
import requests
from _peer_support import RecordingReceiver, append, heartbeat, peer_app, serve
from flask import Flask

from catga_sync.errors import ConfigError
from catga_sync.raft import Message, message_to_dict
from catga_sync.transport.signing import signed_headers
from catga_sync.web import create_peer_blueprint

SECRET = "s3cret for tests"
ME = "http://127.0.0.1:5000"
PEER = "http://127.0.0.1:5001"
LIMIT = 4096
PATH = "/_catga/raft"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    def error(self) -> str:
        assert isinstance(self.body, dict), self.body
        assert set(self.body) == {"error", "message"}, self.body
        assert isinstance(self.body["message"], str) and len(self.body["message"]) > 20
        return str(self.body["error"])


class Client(Protocol):
    def send(
        self, method: str, path: str, body: bytes, headers: dict[str, str], chunked: bool = False
    ) -> Reply: ...


class FlaskClient:
    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()

    def send(
        self, method: str, path: str, body: bytes, headers: dict[str, str], chunked: bool = False
    ) -> Reply:
        if chunked:
            import io

            response = self.client.open(
                path,
                method=method,
                input_stream=io.BytesIO(body),
                headers={**headers, "Transfer-Encoding": "chunked"},
                environ_overrides={"wsgi.input_terminated": True},  # as a dechunking server
            )
        else:
            response = self.client.open(path, method=method, data=body, headers=headers)
        assert response.mimetype == "application/json", response.data[:200]
        return Reply(response.status_code, dict(response.headers), response.get_json())


class SocketClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()

    def send(
        self, method: str, path: str, body: bytes, headers: dict[str, str], chunked: bool = False
    ) -> Reply:
        data: Any = body
        if chunked:
            data = iter([body[i : i + 1000] for i in range(0, len(body), 1000)])
        response = self.session.request(method, self.base + path, data=data, headers=headers)
        assert response.headers["Content-Type"] == "application/json", response.text[:200]
        return Reply(response.status_code, dict(response.headers), response.json())


@dataclass
class Peer:
    client: Client
    receiver: RecordingReceiver
    app: Flask


def make_app(receiver: RecordingReceiver | None, **kwargs: Any) -> Flask:
    options: dict[str, Any] = {"secret": SECRET, "max_body_bytes": LIMIT}
    options.update(kwargs)
    return peer_app(lambda: receiver, **options)


@pytest.fixture(params=["test-client", "socket"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(transport_kind: str) -> Iterator[Any]:
    """Builds a client for an app, through the test client or a real server."""
    servers: list[Any] = []

    def build(app: Flask) -> Client:
        if transport_kind == "test-client":
            return FlaskClient(app)
        context = serve(app)
        server = context.__enter__()
        servers.append(context)
        return SocketClient(f"http://127.0.0.1:{server.port}")

    yield build
    for context in servers:
        context.__exit__(None, None, None)


@pytest.fixture
def peer(connect: Any) -> Peer:
    receiver = RecordingReceiver(ME)
    app = make_app(receiver)
    return Peer(connect(app), receiver, app)


def batch(*messages: Message, protocol: int = 1) -> bytes:
    return json.dumps(
        {"protocol": protocol, "messages": [message_to_dict(m) for m in messages]}
    ).encode()


def signed(
    body: bytes,
    *,
    sender: str = PEER,
    secret: str | None = SECRET,
    now: float | None = None,
    path: str = PATH,
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Catga-Sender": sender, "X-Catga-Node": "n1"}
    if secret is not None:
        stamp = time.time() if now is None else now
        headers.update(signed_headers(secret, "POST", path, body, sender, stamp))
    return headers


def post(peer: Peer, body: bytes, headers: dict[str, str] | None = None, **kw: Any) -> Reply:
    return peer.client.send("POST", PATH, body, signed(body) if headers is None else headers, **kw)


GOOD = (heartbeat(PEER, ME), append(PEER, ME, 1), heartbeat(PEER, ME, commit=1))


# ---------------------------------------------------------------------------------------------
# Accepted


def test_a_valid_batch_is_accepted_and_delivered_whole(peer: Peer) -> None:
    reply = post(peer, batch(*GOOD))
    assert (reply.status, reply.body) == (202, {"accepted": 3})
    assert peer.receiver.batches == [(list(GOOD), "n1")]


def test_an_empty_batch_is_accepted_and_delivers_nothing(peer: Peer) -> None:
    reply = post(peer, batch())
    assert (reply.status, reply.body) == (202, {"accepted": 0})
    assert peer.receiver.batches == []


def test_a_chunked_body_within_the_limit_is_accepted(peer: Peer) -> None:
    reply = post(peer, batch(*GOOD), chunked=True)
    assert reply.status == 202
    assert peer.receiver.messages == list(GOOD)


def test_a_body_of_exactly_the_limit_is_accepted(connect: Any) -> None:
    body = batch(*GOOD)
    receiver = RecordingReceiver(ME)
    client = connect(make_app(receiver, max_body_bytes=len(body)))
    assert client.send("POST", PATH, body, signed(body)).status == 202
    assert len(receiver.messages) == 3


def test_the_node_name_header_is_optional(peer: Peer) -> None:
    headers = signed(batch(*GOOD))
    del headers["X-Catga-Node"]
    assert post(peer, batch(*GOOD), headers).status == 202
    assert peer.receiver.batches[0][1] is None


def test_info_describes_the_node(peer: Peer) -> None:
    reply = peer.client.send("GET", "/_catga/raft/info", b"", {})
    assert (reply.status, reply.body) == (200, {"raft_id": ME, "protocol": 1})


def test_the_app_wide_body_limit_does_not_apply(connect: Any) -> None:
    receiver = RecordingReceiver(ME)
    app = make_app(receiver)
    app.config["MAX_CONTENT_LENGTH"] = 10  # the user's limit for their own routes
    client = connect(app)
    body = batch(*GOOD)
    assert client.send("POST", PATH, body, signed(body)).status == 202


def test_a_custom_prefix_is_served_and_signed(connect: Any) -> None:
    receiver = RecordingReceiver(ME)
    client = connect(make_app(receiver, url_prefix="peer/"))
    body = batch(*GOOD)
    reply = client.send("POST", "/peer/raft", body, signed(body, path="/peer/raft"))
    assert reply.status == 202
    refused = client.send("POST", "/peer/raft", body, signed(body))  # signed for another path
    assert (refused.status, refused.error()) == (401, "unauthorized")
    assert len(receiver.messages) == 3


# ---------------------------------------------------------------------------------------------
# Refused: 400


def message_dict(m: Message) -> dict[str, Any]:
    return message_to_dict(m)


BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"{not json", "malformed_json"),
    "not UTF-8": (b'{"protocol": 1, "messages": ["\xff"]}', "malformed_json"),
    "empty body": (b"", "malformed_json"),
    "JSON array": (json.dumps([message_dict(GOOD[0])]).encode(), "bad_batch"),
    "missing messages": (b'{"protocol": 1}', "bad_batch"),
    "messages not a list": (b'{"protocol": 1, "messages": {}}', "bad_batch"),
    "missing protocol": (json.dumps({"messages": []}).encode(), "bad_batch"),
    "protocol as text": (b'{"protocol": "1", "messages": []}', "bad_batch"),
    "protocol as bool": (b'{"protocol": true, "messages": []}', "bad_batch"),
    "unknown field": (b'{"protocol": 1, "messages": [], "extra": 0}', "bad_batch"),
    "protocol 2": (batch(*GOOD, protocol=2), "unsupported_protocol"),
    "one bad message of three": (
        json.dumps(
            {
                "protocol": 1,
                "messages": [
                    message_dict(GOOD[0]),
                    {**message_dict(GOOD[1]), "term": -1},
                    message_dict(GOOD[2]),
                ],
            }
        ).encode(),
        "invalid_message",
    ),
    "unknown message type": (
        json.dumps({"protocol": 1, "messages": [{"type": "nope"}]}).encode(),
        "invalid_message",
    ),
    "misaddressed": (batch(GOOD[0], heartbeat(PEER, "http://127.0.0.1:5002")), "misaddressed"),
    "from is not the sender": (
        batch(GOOD[0], heartbeat("http://127.0.0.1:5002", ME)),
        "sender_mismatch",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_a_malformed_batch_is_refused_with_400_and_nothing_delivered(peer: Peer, case: str) -> None:
    body, code = BAD_BODIES[case]
    reply = post(peer, body)
    assert reply.status == 400
    assert reply.error() == code
    assert peer.receiver.batches == []


def test_the_bad_message_is_named(peer: Peer) -> None:
    reply = post(peer, BAD_BODIES["one bad message of three"][0])
    assert "messages[1]" in reply.body["message"]
    assert "Nothing in this batch was delivered" in reply.body["message"]


def test_a_bad_node_name_header_is_refused(peer: Peer) -> None:
    headers = {**signed(batch(*GOOD)), "X-Catga-Node": "x" * 300}
    reply = post(peer, batch(*GOOD), headers)
    assert (reply.status, reply.error()) == (400, "bad_header")
    assert peer.receiver.batches == []


# ---------------------------------------------------------------------------------------------
# Refused: 401


def drop(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


UNAUTHORIZED: dict[str, tuple[Any, str]] = {
    "no signature": (lambda b: drop(signed(b), "X-Catga-Signature"), "missing X-Catga-Signature"),
    "no timestamp": (lambda b: drop(signed(b), "X-Catga-Timestamp"), "missing X-Catga-Timestamp"),
    "no sender": (lambda b: drop(signed(b), "X-Catga-Sender"), "missing X-Catga-Sender"),
    "unsigned": (lambda b: signed(b, secret=None), "missing X-Catga-Timestamp"),
    "wrong secret": (lambda b: signed(b, secret="other"), "bad signature"),
    "body altered": (lambda b: signed(b + b" "), "bad signature"),
    "signed as another sender": (
        lambda b: {**signed(b), "X-Catga-Sender": "http://127.0.0.1:5002"},
        "bad signature",
    ),
    "stale timestamp": (lambda b: signed(b, now=time.time() - 300), "clock skew"),
    "future timestamp": (lambda b: signed(b, now=time.time() + 300), "clock skew"),
}


@pytest.mark.parametrize("case", sorted(UNAUTHORIZED))
def test_an_unauthenticated_request_is_refused_with_401_and_nothing_delivered(
    peer: Peer, case: str
) -> None:
    make_headers, text = UNAUTHORIZED[case]
    body = batch(*GOOD)
    reply = post(peer, body, make_headers(body))
    assert reply.status == 401
    assert reply.error() == "unauthorized"
    assert text in reply.body["message"]
    assert "WWW-Authenticate" in reply.headers
    assert peer.receiver.batches == []


def test_a_replayed_request_is_refused(peer: Peer) -> None:
    body = batch(*GOOD)
    headers = signed(body)
    assert post(peer, body, headers).status == 202
    reply = post(peer, body, headers)
    assert (reply.status, reply.error()) == (401, "unauthorized")
    assert "replayed" in reply.body["message"]
    assert len(peer.receiver.batches) == 1


def test_refusals_are_logged_once_as_warning(peer: Peer, caplog: pytest.LogCaptureFixture) -> None:
    body = batch(*GOOD)
    with caplog.at_level(logging.DEBUG, logger="catga_sync.web.blueprint"):
        for _ in range(5):
            assert post(peer, body, signed(body, secret="other")).status == 401
    records = [r for r in caplog.records if r.name == "catga_sync.web.blueprint"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    debugs = [r for r in records if r.levelno == logging.DEBUG]
    assert len(warnings) == 1 and "bad signature" in warnings[0].getMessage()
    assert len(debugs) == 5


# ---------------------------------------------------------------------------------------------
# Refused: 413, 405, 503, 500


def test_an_oversized_body_is_refused_from_its_content_length(peer: Peer) -> None:
    body = batch(*(append(PEER, ME, i, b"y" * 100) for i in range(1, 60)))
    assert len(body) > LIMIT
    reply = post(peer, body)
    assert (reply.status, reply.error()) == (413, "payload_too_large")
    assert str(LIMIT) in reply.body["message"]
    assert peer.receiver.batches == []


def test_an_oversized_chunked_body_is_refused_while_reading(peer: Peer) -> None:
    body = batch(*(append(PEER, ME, i, b"y" * 100) for i in range(1, 60)))
    reply = post(peer, body, chunked=True)
    assert (reply.status, reply.error()) == (413, "payload_too_large")
    assert peer.receiver.batches == []


def test_a_body_one_byte_over_the_limit_is_refused(connect: Any) -> None:
    body = batch(*GOOD)
    receiver = RecordingReceiver(ME)
    client = connect(make_app(receiver, max_body_bytes=len(body) - 1))
    assert client.send("POST", PATH, body, signed(body)).status == 413
    assert client.send("POST", PATH, body, signed(body), chunked=True).status == 413
    assert receiver.batches == []


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_a_wrong_method_gets_a_json_405(peer: Peer, method: str) -> None:
    reply = peer.client.send(method, PATH, b"", {})
    assert (reply.status, reply.error()) == (405, "method_not_allowed")
    assert reply.headers["Allow"] == "POST"
    assert peer.receiver.batches == []


def test_posting_to_info_gets_a_json_405(peer: Peer) -> None:
    reply = peer.client.send("POST", "/_catga/raft/info", batch(*GOOD), signed(batch(*GOOD)))
    assert (reply.status, reply.error()) == (405, "method_not_allowed")
    assert peer.receiver.batches == []


def test_a_node_that_is_not_running_answers_503(connect: Any) -> None:
    client = connect(make_app(None))
    body = batch(*GOOD)
    reply = client.send("POST", PATH, body, signed(body))
    assert (reply.status, reply.error()) == (503, "not_running")
    assert reply.headers["Retry-After"] == "1"
    info = client.send("GET", "/_catga/raft/info", b"", {})
    assert (info.status, info.error()) == (503, "not_running")


def test_authentication_comes_before_the_running_check(connect: Any) -> None:
    client = connect(make_app(None))
    body = batch(*GOOD)
    assert client.send("POST", PATH, body, signed(body, secret="other")).status == 401


class ExplodingReceiver(RecordingReceiver):
    def receive(self, messages: Any, sender_name: str | None) -> None:
        raise RuntimeError("boom")


def test_a_failing_receiver_gets_a_json_500(connect: Any) -> None:
    client = connect(make_app(ExplodingReceiver(ME)))
    body = batch(*GOOD)
    reply = client.send("POST", PATH, body, signed(body))
    assert (reply.status, reply.error()) == (500, "internal_error")


# ---------------------------------------------------------------------------------------------
# Without a secret


def test_without_a_secret_a_warning_says_the_api_is_open(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="catga_sync.web.blueprint"):
        create_peer_blueprint(
            lambda: None, secret=None, max_body_bytes=LIMIT, signature_window=30.0
        )
        create_peer_blueprint(lambda: None, secret="", max_body_bytes=LIMIT, signature_window=30)
        create_peer_blueprint(
            lambda: None, secret="x", max_body_bytes=LIMIT, signature_window=30.0, name="other"
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "catga_sync.web.blueprint"]
    assert len(messages) == 2
    assert all("is open" in m and "CATGA_CLUSTER_SECRET" in m for m in messages)
    assert all("Cluster__Secret" in m for m in messages)


def test_without_a_secret_unsigned_requests_are_accepted(connect: Any) -> None:
    receiver = RecordingReceiver(ME)
    client = connect(make_app(receiver, secret=None))
    body = batch(*GOOD)
    assert client.send("POST", PATH, body, signed(body, secret=None)).status == 202
    assert len(receiver.messages) == 3


def test_without_a_secret_the_sender_header_is_still_required(connect: Any) -> None:
    receiver = RecordingReceiver(ME)
    client = connect(make_app(receiver, secret=None))
    body = batch(*GOOD)
    reply = client.send("POST", PATH, body, drop(signed(body, secret=None), "X-Catga-Sender"))
    assert (reply.status, reply.error()) == (400, "missing_sender")
    assert receiver.batches == []


# ---------------------------------------------------------------------------------------------
# The application is left alone


def test_the_blueprint_does_not_touch_app_wide_error_handlers() -> None:
    app = make_app(RecordingReceiver(ME))

    @app.route("/mine", methods=["POST"])
    def mine() -> str:
        return "ok"

    assert app.error_handler_spec.get(None, {}) == {}
    client = app.test_client()
    assert client.get("/nowhere").mimetype == "text/html"  # the app's own 404
    assert client.get("/mine").mimetype == "text/html"  # the app's own 405


@pytest.mark.parametrize(
    "kwargs",
    [{"max_body_bytes": 0}, {"signature_window": 0.0}, {"signature_window": -1.0}],
)
def test_bad_limits_are_refused_at_creation(kwargs: dict[str, Any]) -> None:
    options: dict[str, Any] = {"secret": SECRET, "max_body_bytes": LIMIT, "signature_window": 30.0}
    options.update(kwargs)
    with pytest.raises(ConfigError):
        create_peer_blueprint(lambda: None, **options)
