"""The embedded server keeps HTTP/1.1 connections alive when it is safe, over real sockets."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator

import pytest
from flask import Flask, Response, request

from catga_sync.web.worker_app import make_threaded_server


@pytest.fixture
def server() -> Iterator[tuple[int, object]]:
    app = Flask("keepalive-test")

    @app.post("/echo")
    def echo() -> Response:
        return Response(request.get_data(), status=202)

    @app.post("/ignore")
    def ignore() -> tuple[str, int]:
        return "ignored", 200  # never reads the body

    @app.get("/stream")
    def stream() -> Response:
        return Response(iter([b"a", b"b", b"c"]))  # no Content-Length

    @app.get("/fail")
    def fail() -> str:
        raise RuntimeError("boom")

    srv = make_threaded_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1], srv
    srv.shutdown()
    srv.server_close()


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> http.client.HTTPResponse:
    conn.request("POST", path, body, {"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    response.read()
    return response


def test_requests_with_a_length_reuse_one_connection(server: tuple[int, object]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=5)
    first = post(conn, "/echo", b"one")
    sock = conn.sock
    second = post(conn, "/echo", b"two")
    assert (first.status, second.status) == (202, 202)
    assert not second.will_close and conn.sock is sock


def test_a_body_the_app_did_not_read_is_drained_and_the_connection_kept(
    server: tuple[int, object],
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=5)
    assert post(conn, "/ignore", b"x" * 10_000).status == 200
    sock = conn.sock
    conn.request("POST", "/echo", b"after", {})
    response = conn.getresponse()
    assert response.read() == b"after" and conn.sock is sock


def test_a_response_without_a_length_closes_the_connection(server: tuple[int, object]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=5)
    conn.request("GET", "/stream")
    response = conn.getresponse()
    assert response.read() == b"abc"
    assert response.will_close


def test_an_error_flask_answers_keeps_the_connection(server: tuple[int, object]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=5)
    conn.request("GET", "/fail")
    response = conn.getresponse()
    response.read()
    assert response.status == 500 and not response.will_close
    assert post(conn, "/echo", b"still open").status == 202


def test_an_error_escaping_the_app_answers_500_and_closes() -> None:
    app = Flask("propagating")
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.get("/fail")
    def fail() -> str:
        raise RuntimeError("boom")

    srv = make_threaded_server(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
        conn.request("GET", "/fail")
        response = conn.getresponse()
        response.read()
        assert response.status == 500 and response.will_close
    finally:
        srv.shutdown()
        srv.server_close()


def test_closing_the_server_closes_idle_kept_alive_connections(
    server: tuple[int, object],
) -> None:
    port, srv = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert post(conn, "/echo", b"one").status == 202
    assert conn.sock is not None
    srv.shutdown()  # type: ignore[attr-defined]
    srv.server_close()  # type: ignore[attr-defined]
    assert conn.sock.recv(1) == b""  # the server closed its end


def test_a_client_still_sending_a_body_answered_early_reads_the_answer(
    server: tuple[int, object],
) -> None:
    """A 5 MB body to a route that answers without reading it (a 413, say): the server reads
    and discards the rest before it closes (a lingering close), so the client, which writes its
    whole body before it reads, gets the answer instead of a broken pipe."""
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=10)
    try:
        response = post(conn, "/ignore", b"x" * (5 << 20))
        assert response.status == 200
    finally:
        conn.close()


def test_a_client_that_sent_only_its_headers_gets_the_answer_at_once(
    server: tuple[int, object],
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=10)
    try:
        conn.putrequest("POST", "/ignore")
        conn.putheader("Content-Length", str(9 << 20))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"ignored"
    finally:
        conn.close()
