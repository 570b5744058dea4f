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
  (no WSGI, no Flask) — what is left of it without Flask.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import command_line, load_line, machine_line

from catga_sync.transport.http11 import PeerConnection

TICKS = os.sysconf("SC_CLK_TCK")
BODY = b"x" * 100


def serve(kind: str, port: int) -> None:
    if kind == "flask":
        from flask import Flask, request
        from werkzeug.serving import make_server

        from catga_sync.web.keepalive import KeepAliveRequestHandler

        app = Flask("floor")

        @app.post("/p")
        def p() -> tuple[bytes, int, dict[str, str]]:
            request.get_data()
            return b"ok", 200, {"Content-Type": "application/octet-stream"}

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
        server_before, client_before = process_cpu(server.pid), time.thread_time()
        for _ in range(requests):
            connection.post("/p", BODY, headers)
            if gap:
                time.sleep(gap)
        server_cpu = process_cpu(server.pid) - server_before
        client_cpu = time.thread_time() - client_before
        connection.close()
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
    print(f"{args.runs} runs of {args.requests} requests each; CPU per request, µs (median)")
    print(f"{'server':<12} {'pace':<22} {'server CPU':>11} {'client CPU':>11} {'% of a core':>12}")
    for kind in ("flask", "http.server"):
        for gap in (args.gap, 0.0):
            figures = [measure(kind, args.requests, gap) for _ in range(args.runs)]
            server_us = statistics.median(f[0] for f in figures)
            client_us = statistics.median(f[1] for f in figures)
            pace = f"one every {gap * 1000:.0f} ms" if gap else "back to back"
            share = f"{server_us * 1e-6 / gap * 100:.2f}" if gap else "-"
            print(f"{kind:<12} {pace:<22} {server_us:>11.0f} {client_us:>11.0f} {share:>12}")
    print(load_line("after"))


if __name__ == "__main__":
    main()
