"""Helpers for the transport tests: a recording receiver, message builders, real servers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from catga_sync.raft import AppendEntries, Entry, Heartbeat, HeartbeatResponse, Message
from catga_sync.transport.arrival import MAX_WAIT
from catga_sync.web import create_peer_blueprint
from catga_sync.web.keepalive import KeepAliveServer


class RecordingReceiver:
    """A real PeerReceiver that keeps every batch it is given (what a node would queue)."""

    def __init__(self, raft_id: str) -> None:
        self._raft_id = raft_id
        self.batches: list[tuple[list[Message], str | None]] = []
        self._cond = threading.Condition()

    @property
    def raft_id(self) -> str:
        return self._raft_id

    def receive(self, messages: Sequence[Message], sender_name: str | None) -> None:
        with self._cond:
            self.batches.append((list(messages), sender_name))
            self._cond.notify_all()

    @property
    def messages(self) -> list[Message]:
        with self._cond:
            return [m for batch, _ in self.batches for m in batch]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` messages have arrived; False on the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(len(b) for b, _ in self.batches) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


class InlineReceiver(RecordingReceiver):
    """A RecordingReceiver that answers inline, as a node does: it records the batch, says it
    is queued, and returns :meth:`answer` (nothing, unless a test says otherwise)."""

    def receive_and_reply(
        self,
        messages: Sequence[Message],
        sender_name: str | None,
        timeout: float,
        *,
        queued: Callable[[], None] | None = None,
    ) -> list[Message]:
        self.receive(messages, sender_name)
        if queued is not None:
            queued()
        return self.answer(messages)

    def answer(self, messages: Sequence[Message]) -> list[Message]:
        return []


class AnsweringReceiver(InlineReceiver):
    """A receiver that answers every heartbeat inline, as a node's Raft loop would."""

    def answer(self, messages: Sequence[Message]) -> list[Message]:
        return [heartbeat_response(self.raft_id, m.frm, m.term, m.context) for m in messages]


def heartbeat(frm: str, to: str, term: int = 1, commit: int = 0, context: str = "") -> Heartbeat:
    return Heartbeat(term, frm, to, commit, context)


def heartbeat_response(frm: str, to: str, term: int = 1, context: str = "") -> HeartbeatResponse:
    return HeartbeatResponse(term, frm, to, context)


def append(frm: str, to: str, index: int, data: bytes = b"x", term: int = 1) -> AppendEntries:
    """An AppendEntries carrying the single entry ``index``."""
    return AppendEntries(
        term, frm, to, index - 1, term if index > 1 else 0, (Entry(index, term, data),), 0
    )


def peer_app(
    get_receiver: Callable[[], RecordingReceiver | None],
    *,
    secret: str | None,
    max_body_bytes: int = 1 << 20,
    signature_window: float = 30.0,
    url_prefix: str = "/_catga",
    arrival_wait: float = MAX_WAIT,
) -> Flask:
    app = Flask("peer_test_app")
    app.register_blueprint(
        create_peer_blueprint(
            get_receiver,
            secret=secret,
            max_body_bytes=max_body_bytes,
            signature_window=signature_window,
            url_prefix=url_prefix,
            arrival_wait=arrival_wait,
        )
    )
    return app


@contextlib.contextmanager
def serve(app: Flask, port: int = 0, *, embedded: bool = False) -> Iterator[BaseWSGIServer]:
    """Run ``app`` on a real loopback socket in a thread; ``server.port`` says where. With
    ``embedded``, on the node's embedded server (it streams both ways: peer frames)."""
    server = (
        KeepAliveServer("127.0.0.1", port, app)
        if embedded
        else make_server("127.0.0.1", port, app, threaded=True)
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-server", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def unused_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port that accepts connections (in the kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()  # resets the pending connections, so waiting clients fail at once


class CountingApp:
    """The peer app, counting the HTTP requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.requests += 1
        return self.app(environ, start_response)


@contextlib.contextmanager
def serve_counted(
    receiver: RecordingReceiver, secret: str | None
) -> Iterator[tuple[CountingApp, str]]:
    """``receiver``'s peer app on the embedded server, counting its requests; yields the app
    and its URL, which becomes the receiver's own Raft id."""
    app = CountingApp(peer_app(lambda: receiver, secret=secret))
    with serve(app, embedded=True) as server:  # type: ignore[arg-type]
        receiver._raft_id = f"http://127.0.0.1:{server.port}"
        yield app, receiver._raft_id
