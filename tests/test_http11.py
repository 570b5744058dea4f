"""The peer HTTP/1.1 client against canned answers from a raw socket server: the framings a
peer or a proxy in between may use, connections closed by the peer, and malformed answers."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from catga_sync.transport.http11 import PeerConnection


class CannedServer:
    """Accepts connections; answers each request read with the next canned answer."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    request = self._read_request(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    answer = self.answers.pop(0)
                    conn.sendall(answer)
                    if b"Connection: close" in answer or (
                        b"Content-Length" not in answer and (b"chunked" not in answer)
                    ):
                        break

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[list[CannedServer]]:
    servers: list[CannedServer] = []
    yield servers
    for server in servers:
        server.close()


def connect(serve: list[CannedServer], *answers: bytes) -> tuple[CannedServer, PeerConnection]:
    server = CannedServer(list(answers))
    serve.append(server)
    return server, PeerConnection("127.0.0.1", server.port, https=False, timeout=2.0)


def test_content_length_answers_reuse_one_connection(serve: list[CannedServer]) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    server, connection = connect(serve, ok, ok)
    assert connection.post("/x", b"abc", {"X-A": "1"}) == (
        200,
        b"{}",
        {"Content-Type": "application/json", "Content-Length": "2"},
    )
    assert connection.post("/x", b"", {})[1] == b"{}"
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /x HTTP/1.1\r\n")
    assert b"\r\nX-A: 1\r\n" in first and b"\r\nContent-Length: 3\r\n" in first
    assert first.endswith(b"\r\n\r\nabc")


def test_chunked_and_close_delimited_answers(serve: list[CannedServer]) -> None:
    chunked = (
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    closing = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    _, connection = connect(serve, chunked, closing)
    assert connection.post("/x", b"1", {})[:2] == (202, b"abcde")
    assert connection.is_open
    assert connection.post("/x", b"2", {})[:2] == (200, b"until the end")
    assert not connection.is_open  # a close-delimited answer ends the connection


def test_a_peer_that_closed_the_idle_connection_is_noticed(serve: list[CannedServer]) -> None:
    bye = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk"
    server, connection = connect(serve, bye, ok)
    assert connection.post("/x", b"", {})[0] == 200
    assert not connection.is_open
    assert connection.post("/x", b"", {})[1] == b"k"  # a new connection
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"SPDY/9 what\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", http.client.HTTPException),
    ],
)
def test_malformed_answers_raise_http_errors_and_close(
    serve: list[CannedServer], answer: bytes, error: type[Exception]
) -> None:
    server, connection = connect(serve, answer + b"" if answer else b"")
    if not answer:  # the server closes without a word
        server.answers = [b""]
    with pytest.raises(error):
        connection.post("/x", b"", {})
    assert not connection.is_open


def test_a_refused_connection_is_an_os_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        PeerConnection("127.0.0.1", port, https=False, timeout=1.0).post("/x", b"", {})
