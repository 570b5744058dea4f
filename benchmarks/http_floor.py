"""What one heartbeat-sized HTTP exchange costs in Python, at the heartbeat's pace: the floor
under a node's idle CPU.

A server process answers ``POST /p`` (a 100-byte body, a 2-byte answer) and this process sends
it one request every ``--gap`` seconds (the guide's 50 ms heartbeat by default) over one
kept-alive connection, with the peer transport's client (:mod:`catga_sync.transport.http11`);
then again back to back. It prints the CPU time per request of the server process and of the
sending thread, for each server:

- ``flask``: a Flask route that reads the body, served by the node's embedded server
  (:mod:`catga_sync.web.keepalive`) — what a follower pays per heartbeat before any Raft work;
- ``http.server``: the same exchange with a bare :class:`http.server.BaseHTTPRequestHandler`
  (no WSGI, no Flask) — what is left of it without Flask;
- ``flask-stream``: the same Flask app and server, but one request carries all the exchanges:
  a chunked ``POST`` whose view reads length-prefixed frames from its body and streams an
  answer frame back for each (the sender is a plain socket) — what a heartbeat would cost if
  the peer route carried many messages per Flask request instead of one.

    python benchmarks/http_floor.py [--requests 400] [--gap 0.05] [--runs 3]

A node's idle CPU (``failover.py``) set beside it says how much of it is this floor: a follower
answers 1 / gap requests a second, a leader of ``n`` members sends (n - 1) / gap.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import command_line, load_line, machine_line

from catga_sync.transport.http11 import PeerConnection

TICKS = os.sysconf("SC_CLK_TCK")
BODY = b"x" * 100
ANSWER_FRAME = b"\x00\x00\x00\x02ok"


def serve(kind: str, port: int) -> None:
    if kind in ("flask", "flask-stream"):
        from flask import Flask, Response, request
        from werkzeug.serving import make_server

        from catga_sync.web.keepalive import KeepAliveRequestHandler

        app = Flask("floor")

        @app.post("/p")
        def p() -> tuple[bytes, int, dict[str, str]]:
            request.get_data()
            return b"ok", 200, {"Content-Type": "application/octet-stream"}

        @app.post("/s")
        def s() -> Response:
            stream = request.environ["wsgi.input"]

            def answers() -> Iterator[bytes]:
                while (head := _read_exact(stream, 4)) is not None:
                    if _read_exact(stream, int.from_bytes(head, "big")) is None:
                        return
                    yield ANSWER_FRAME

            return Response(answers(), 200, mimetype="application/octet-stream")

        server = make_server(
            "127.0.0.1", port, app, threaded=True, request_handler=KeepAliveRequestHandler
        )
        server.serve_forever()
    else:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def _read_exact(stream: Any, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        part = stream.read(size - len(data))
        if not part:
            return None
        data += part
    return data


class StreamExchange:
    """The sending side of ``flask-stream``: one chunked POST, a frame per exchange."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.sock.sendall(
            b"POST /s HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        frame = len(BODY).to_bytes(4, "big") + BODY
        self.chunk = b"%x\r\n%s\r\n" % (len(frame), frame)
        self.sock.sendall(self.chunk)
        while self.reader.readline() not in (b"\r\n", b""):  # the answer's status and headers
            pass
        self._read_answer()

    def _read_answer(self) -> None:
        head = _read_exact(self.reader, 4)
        if head is None or _read_exact(self.reader, int.from_bytes(head, "big")) is None:
            raise ConnectionError("the stream ended")

    def post(self) -> None:
        self.sock.sendall(self.chunk)
        self._read_answer()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(kind: str, requests: int, gap: float) -> tuple[float, float]:
    """CPU microseconds per request: (server process, sending thread)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "serve", kind, str(port)])
    try:
        connection = PeerConnection("127.0.0.1", port, https=False, timeout=5.0)
        deadline = time.monotonic() + 10
        while True:
            try:
                connection.post("/p", BODY, {})
                break
            except OSError:
                connection.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        headers = {"Content-Type": "application/octet-stream", "X-Catga-Signature": "a" * 64}
        if kind == "flask-stream":
            connection.close()
            stream = StreamExchange(port)
            send: Callable[[], object] = stream.post
            close: Callable[[], None] = stream.close
        else:
            send, close = lambda: connection.post("/p", BODY, headers), connection.close
        server_before, client_before = process_cpu(server.pid), time.thread_time()
        for _ in range(requests):
            send()
            if gap:
                time.sleep(gap)
        server_cpu = process_cpu(server.pid) - server_before
        client_cpu = time.thread_time() - client_before
        close()
        return server_cpu / requests * 1e6, client_cpu / requests * 1e6
    finally:
        server.kill()
        server.wait()


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per run")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between requests")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(
        f"{args.runs} runs of {args.requests} requests each ({args.requests * 10} back to back); "
        "CPU per request, µs (median)"
    )
    print(f"{'server':<12} {'pace':<22} {'server CPU':>11} {'client CPU':>11} {'% of a core':>12}")
    for kind in ("flask", "http.server", "flask-stream"):
        for gap in (args.gap, 0.0):
            count = args.requests if gap else args.requests * 10  # CPU is read in 10 ms ticks
            figures = [measure(kind, count, gap) for _ in range(args.runs)]
            server_us = statistics.median(f[0] for f in figures)
            client_us = statistics.median(f[1] for f in figures)
            pace = f"one every {gap * 1000:.0f} ms" if gap else "back to back"
            share = f"{server_us * 1e-6 / gap * 100:.2f}" if gap else "-"
            print(f"{kind:<12} {pace:<22} {server_us:>11.0f} {client_us:>11.0f} {share:>12}")
    print(load_line("after"))


if __name__ == "__main__":
    main()
