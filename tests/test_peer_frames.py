"""Peer frames: many exchanges on one POST, each checked as a request of its own.

A sender takes frames once a peer's answer offers them (only the embedded server, which
streams both ways, offers them, and never to a relayed request); every frame is signed,
replay-checked and addressed like a request, and answered in order; a peer that refuses the
opening, or never answers it, gets one request per exchange again.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _peer_support import (
    AnsweringReceiver,
    CountingApp,
    RecordingReceiver,
    heartbeat,
    heartbeat_response,
    peer_app,
    serve,
    serve_counted,
)

from catga_sync.errors import PeerAuthError
from catga_sync.raft.codec import message_to_dict
from catga_sync.transport.frames import (
    FrameError,
    decode_answer,
    encode_answer,
    encode_frame,
    read_frame,
)
from catga_sync.transport.http import HttpTransport
from catga_sync.transport.http11 import FramesRefused, PeerConnection
from catga_sync.transport.signing import peer_post_headers, verify_reply
from catga_sync.transport.wire import encode_batch

SECRET = "frames secret"
ME = "http://127.0.0.1:5000"
PATH = "/_catga/raft"
WAIT = 10.0


def _reader(data: bytes) -> Any:
    view = memoryview(data)
    position = [0]

    def read(size: int) -> bytes:
        start = position[0]
        position[0] = min(len(view), start + min(size, 3))  # short reads, as a socket gives
        return bytes(view[start : position[0]])

    return read


def test_a_frame_reads_back_as_it_was_written_and_a_bad_one_is_refused() -> None:
    meta = {"X-Catga-Sender": ME, "X-Catga-Reply": "inline"}
    data = encode_frame(meta, b"body") + encode_answer(202, {"A": "b"}, b"{}")
    read = _reader(data)
    assert read_frame(read, 100) == (meta, b"body")
    answer = read_frame(read, 100)
    assert answer is not None
    assert decode_answer(*answer) == (202, b"{}", {"A": "b"})
    assert read_frame(read, 100) is None  # a clean end
    with pytest.raises(FrameError, match="ended inside a frame"):
        read_frame(_reader(encode_frame(meta, b"body")[:-1]), 100)
    with pytest.raises(FrameError, match="exceeds the limit of 3"):
        read_frame(_reader(encode_frame(meta, b"body")), 3)
    with pytest.raises(FrameError, match="object of strings"):
        read_frame(_reader(encode_frame({"a": 1}, b"")), 100)
    bad_json = b"\x00\x00\x00\x02\x00\x00\x00\x00{x"
    with pytest.raises(FrameError, match="not JSON"):
        read_frame(_reader(bad_json), 100)
    with pytest.raises(FrameError, match="HTTP status"):
        decode_answer({":status": "200"}, b"")


@pytest.fixture
def embedded_peer(secret: str | None) -> Iterator[tuple[AnsweringReceiver, CountingApp, str]]:
    peer = AnsweringReceiver("placeholder")
    with serve_counted(peer, secret) as (app, url):
        yield peer, app, url


def _transport(
    peer_id: str, secret: str | None, ours: RecordingReceiver, **kw: Any
) -> HttpTransport:
    return HttpTransport(
        sender_id=ME,
        sender_name="me",
        peers=[peer_id],
        secret=secret,
        url_prefix="/_catga",
        timeout=2.0,
        reply_receiver=ours,
        **kw,
    )


def test_a_sender_takes_frames_once_offered_and_sends_every_exchange_on_one_request(
    embedded_peer: tuple[AnsweringReceiver, CountingApp, str], secret: str | None
) -> None:
    peer, app, peer_id = embedded_peer
    ours = RecordingReceiver(ME)
    transport = _transport(peer_id, secret, ours)
    try:
        transport.send([heartbeat(ME, peer_id, term=1)])  # a request: its answer offers frames
        assert ours.wait_for(1), transport.stats()
        assert transport.stats()[peer_id]["frames"] == "offered"
        for term in range(2, 7):  # one at a time, so that none is dropped as stale
            transport.send([heartbeat(ME, peer_id, term=term, context=f"c{term}")])
            assert ours.wait_for(term), transport.stats()
        stats = transport.stats()[peer_id]
    finally:
        transport.close()
    assert stats["frames"] == "working"
    assert stats["sent"] == 6 and stats["failed"] == 0
    assert app.requests == 2  # the first exchange, then one request for the five others
    assert [m.term for m in peer.messages] == [1, 2, 3, 4, 5, 6]
    assert ours.messages == [heartbeat_response(peer_id, ME, 1, "")] + [
        heartbeat_response(peer_id, ME, t, f"c{t}") for t in range(2, 7)
    ]


def _open(
    port: int, secret: str | None, *, signed: bool = True
) -> tuple[PeerConnection, dict[str, str]]:
    connection = PeerConnection("127.0.0.1", port, https=False, timeout=5.0)
    opening = peer_post_headers(secret if signed else None, PATH, b"", ME, "me", time.time())
    return connection, opening


def _frame(secret: str | None, body: bytes) -> dict[str, str]:
    headers = peer_post_headers(secret, PATH, body, ME, "me", time.time())
    headers["X-Catga-Reply"] = "inline"
    return headers


def test_each_frame_is_checked_as_a_request_and_a_refusal_does_not_end_the_exchange() -> None:
    peer = AnsweringReceiver("placeholder")
    with serve(peer_app(lambda: peer, secret=SECRET), embedded=True) as server:
        peer_id = peer._raft_id = f"http://127.0.0.1:{server.port}"
        connection, opening = _open(server.port, SECRET)
        good = encode_batch([heartbeat(ME, peer_id, term=4)])
        try:
            headers = _frame(SECRET, good)
            forged = {**headers, "X-Catga-Signature": "0" * 64}
            status, body, _ = connection.exchange(PATH, good, forged, opening)
            assert status == 401 and json.loads(body)["error"] == "unauthorized"
            status, body, answer_headers = connection.exchange(PATH, good, headers, opening)
            assert status == 200, body
            verify_reply(  # the reply is signed and bound to this frame, as a request's
                SECRET, PATH, headers["X-Catga-Signature"], body, answer_headers, time.time(), 30
            )
            with pytest.raises(PeerAuthError):  # and to no other
                verify_reply(SECRET, PATH, "0" * 64, body, answer_headers, time.time(), 30)
            assert json.loads(body)["messages"] == [
                message_to_dict(heartbeat_response(peer_id, ME, 4))
            ]
            status, body, _ = connection.exchange(PATH, good, headers, opening)  # a replay
            assert status == 401 and "replay" in json.loads(body)["message"]
            elsewhere = encode_batch([heartbeat(ME, "http://127.0.0.1:1", term=5)])
            status, body, _ = connection.exchange(
                PATH, elsewhere, _frame(SECRET, elsewhere), opening
            )
            assert status == 400, body
        finally:
            connection.close()
    assert peer.messages == [heartbeat(ME, peer_id, term=4)]  # the good frame, once


def test_an_unsigned_opening_is_answered_as_a_refused_request() -> None:
    peer = AnsweringReceiver("placeholder")
    with serve(peer_app(lambda: peer, secret=SECRET), embedded=True) as server:
        peer._raft_id = f"http://127.0.0.1:{server.port}"
        connection, opening = _open(server.port, SECRET, signed=False)
        body = encode_batch([heartbeat(ME, peer._raft_id)])
        with pytest.raises(FramesRefused) as refused:
            connection.exchange(PATH, body, _frame(SECRET, body), opening)
        assert refused.value.status == 401
        assert json.loads(refused.value.body)["error"] == "unauthorized"
        assert not connection.is_open
    assert peer.messages == []


def test_a_frame_that_cannot_be_read_ends_the_exchange(caplog: pytest.LogCaptureFixture) -> None:
    peer = AnsweringReceiver("placeholder")
    with serve(peer_app(lambda: peer, secret=None), embedded=True) as server:
        peer._raft_id = f"http://127.0.0.1:{server.port}"
        body = encode_batch([heartbeat(ME, peer._raft_id)])
        connection, opening = _open(server.port, None)
        assert connection.exchange(PATH, body, _frame(None, body), opening)[0] == 200
        caplog.set_level(logging.WARNING, logger="catga_sync.web.blueprint")
        sock = connection._sock
        assert sock is not None
        garbage = b"\x00\x00\x00\x02\x00\x00\x00\x00{x"
        sock.sendall(b"%x\r\n%b\r\n" % (len(garbage), garbage))
        sock.settimeout(5.0)
        assert sock.recv(100) == b""  # the server ended the exchange
        connection.close()
    assert any("bad_frame" in r.getMessage() for r in caplog.records)
    assert len(peer.messages) == 1


def test_a_server_that_does_not_stream_both_ways_is_never_asked_for_frames() -> None:
    peer = AnsweringReceiver("placeholder")
    with serve(peer_app(lambda: peer, secret=None)) as server:  # Werkzeug's own server
        peer_id = peer._raft_id = f"http://127.0.0.1:{server.port}"
        ours = RecordingReceiver(ME)
        transport = _transport(peer_id, None, ours)
        _three_heartbeats_without_frames(transport, peer_id, ours)
        connection, opening = _open(server.port, None)
        body = encode_batch([heartbeat(ME, peer_id, term=9)])
        with pytest.raises(FramesRefused) as refused:
            connection.exchange(PATH, body, _frame(None, body), opening)
        assert refused.value.status == 415
        assert json.loads(refused.value.body)["error"] == "frames_unsupported"
    assert [m.term for m in peer.messages] == [1, 2, 3]


def test_a_relayed_request_and_a_sender_told_not_to_are_not_given_frames() -> None:
    peer = AnsweringReceiver("placeholder")
    with serve(peer_app(lambda: peer, secret=None), embedded=True) as server:
        peer_id = peer._raft_id = f"http://127.0.0.1:{server.port}"
        body = encode_batch([heartbeat(ME, peer_id)])
        connection = PeerConnection("127.0.0.1", server.port, https=False, timeout=5.0)
        try:
            _, _, offered = connection.post(PATH, body, _frame(None, body))
            relayed = {**_frame(None, body), "X-Catga-Worker-Token": "t"}
            _, _, not_offered = connection.post(PATH, body, relayed)
        finally:
            connection.close()
        assert offered.get("X-Catga-Frames") == "1"
        assert "X-Catga-Frames" not in not_offered
        ours = RecordingReceiver(ME)
        transport = _transport(peer_id, None, ours, frames=False)
        _three_heartbeats_without_frames(transport, peer_id, ours)


def _three_heartbeats_without_frames(
    transport: HttpTransport, peer_id: str, ours: RecordingReceiver
) -> None:
    try:
        for term in range(1, 4):
            transport.send([heartbeat(ME, peer_id, term=term)])
            assert ours.wait_for(term), transport.stats()
        assert transport.stats()[peer_id]["frames"] == "unknown"
    finally:
        transport.close()


class _HoldingProxy:
    """A peer that answers each plain request with an offer of frames (and a reply), but holds a
    chunked request without answering it: what a proxy that waits for the end of a request
    body looks like to the sender."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.plain = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def peer_id(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                head = []
                while (line := reader.readline()) not in (b"\r\n", b""):
                    head.append(line.decode("latin-1").strip())
                if not head:
                    return
                headers = dict(h.split(": ", 1) for h in head[1:])
                if headers.get("Transfer-Encoding") == "chunked":
                    self.held.append(conn)
                    return
                batch = json.loads(reader.read(int(headers["Content-Length"])))
                self.plain += 1
                term = batch["messages"][0]["term"]
                answer = encode_batch([heartbeat_response(self.peer_id, ME, term)])
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Catga-Frames: 1\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(answer), answer)
                )
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_peer_that_never_answers_the_opening_gets_one_request_per_exchange(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = _HoldingProxy()
    ours = RecordingReceiver(ME)
    caplog.set_level(logging.WARNING, logger="catga_sync.transport")
    transport = HttpTransport(
        sender_id=ME,
        sender_name="me",
        peers=[proxy.peer_id],
        secret=None,
        url_prefix="/_catga",
        timeout=0.3,
        reply_receiver=ours,
    )
    try:
        transport.send([heartbeat(ME, proxy.peer_id, term=1)])
        assert ours.wait_for(1), transport.stats()
        transport.send([heartbeat(ME, proxy.peer_id, term=2)])  # framed: held, times out
        deadline = time.monotonic() + WAIT
        while transport.stats()[proxy.peer_id]["frames"] != "off":
            assert time.monotonic() < deadline, transport.stats()
            time.sleep(0.02)
        transport.send([heartbeat(ME, proxy.peer_id, term=3)])  # one request again
        assert ours.wait_for(2), transport.stats()
    finally:
        transport.close()
        proxy.close()
    assert [m.term for m in ours.messages] == [1, 3]
    assert proxy.plain == 2
    assert any("was not answered in time" in r.getMessage() for r in caplog.records)


def test_a_sender_closing_its_exchange_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """A sender ends an exchange by closing it (a stop, a timeout): no last chunk, no error."""
    peer = AnsweringReceiver("placeholder")
    caplog.set_level(logging.DEBUG, logger="catga_sync.web")
    with serve(peer_app(lambda: peer, secret=None), embedded=True) as server:
        peer._raft_id = f"http://127.0.0.1:{server.port}"
        body = encode_batch([heartbeat(ME, peer._raft_id)])
        connection, opening = _open(server.port, None)
        assert connection.exchange(PATH, body, _frame(None, body), opening)[0] == 200
        connection.close()
        deadline = time.monotonic() + WAIT
        while server._connections:  # the server's side of the exchange has ended
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
