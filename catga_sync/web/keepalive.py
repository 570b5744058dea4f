"""The embedded threaded server, with HTTP/1.1 keep-alive that Werkzeug's own server lacks.

Since Werkzeug 2.1 its development server answers every request with ``Connection: close``, so
each peer RPC paid for a new TCP connection and a new server thread. Every command crosses this
path several times (entries out, acknowledgements back, the commit out); measured here a POST
to the Flask peer route costs ~1.7 ms of CPU (client and server) on a new connection per request
and ~0.55 ms kept alive.

:class:`KeepAliveRequestHandler` runs the WSGI application itself and keeps the connection open
only when that is safe, the way Werkzeug explains it is not in general: the request came with a
``Content-Length`` (what the application left unread is drained, up to
:data:`DRAIN_LIMIT`), and the response has a ``Content-Length`` that its body matches. Anything
else (a chunked request, a streamed response) is answered as before and the connection closed;
a close with a request body left unread lingers, so that a client still sending it reads the
answer (a 413) instead of a reset.
The status line, headers and a first body chunk leave in one write, with Nagle's algorithm off,
so no reply waits for a delayed ACK.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from ..transport.frames import FRAMES_ENVIRON_KEY, HEAD_AT_ONCE_KEY

log = logging.getLogger("catga_sync.web")
_access_log = logging.getLogger("werkzeug")

DRAIN_LIMIT = 1 << 20
"""Request bytes the application left unread that are still drained to keep the connection;
past this the connection is closed instead."""
IDLE_TIMEOUT = 30.0
"""Seconds a kept-alive connection may stay idle before the server closes it."""
LINGER_BYTES = 64 << 20
LINGER_SECONDS = 5.0
LINGER_IDLE = 1.0
"""A connection closed with a request body left unread lingers: up to ``LINGER_BYTES`` more
are read and discarded, for at most ``LINGER_SECONDS``, ``LINGER_IDLE`` without data ending it."""

_NO_BODY = frozenset({204, 304})


class _RequestBody(io.RawIOBase):
    """``wsgi.input`` limited to ``Content-Length``, counting what was read."""

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self.remaining = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.remaining <= 0:
            return 0
        view = memoryview(buffer)[: self.remaining]
        count: int = self._stream.readinto(view)
        if not count:
            raise ConnectionError("the client closed the connection before sending its body")
        self.remaining -= count
        return count

    def drain(self, limit: int) -> bool:
        """Read and discard the rest of the body; False when more than ``limit`` bytes are left."""
        if self.remaining > limit:
            return False
        while self.remaining > 0:
            if not self.read(min(self.remaining, 1 << 16)):
                return False
        return True


class KeepAliveRequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler speaking HTTP/1.1 with keep-alive (see the module docstring)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    _date: tuple[int, str] = (-1, "")
    timeout = IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        track = getattr(self.server, "track", None)
        if callable(track):
            track(self.connection, True)
        self._tls_refused = False
        if isinstance(self.connection, ssl.SSLSocket):
            # The handshake runs here, in the connection's thread, not in the accept loop:
            # a slow or hostile client holds up only its own thread.
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                self._tls_refused = True
                log.warning("TLS handshake with %s refused: %s", self.client_address[0], exc)

    def handle(self) -> None:
        if not self._tls_refused:
            super().handle()

    def finish(self) -> None:
        track = getattr(self.server, "track", None)
        if callable(track):
            track(self.connection, False)
        super().finish()

    def make_environ(self) -> Any:
        environ = super().make_environ()
        # It streams a request body and its answer both ways at once: the peer route may
        # offer frames (:mod:`catga_sync.transport.frames`).
        environ[FRAMES_ENVIRON_KEY] = True
        return environ

    def date_time_string(self, timestamp: float | None = None) -> str:
        # Formatting the Date header costs 4% of a peer POST; it changes once a second.
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        cached = KeepAliveRequestHandler._date
        if cached[0] != now:
            cached = (now, super().date_time_string(now))
            KeepAliveRequestHandler._date = cached  # one tuple: threads never see half of it
        return cached[1]

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):
            return  # a kept-alive connection idle for IDLE_TIMEOUT: closed, nothing went wrong
        super().log_error(format, *args)

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.environ = self.make_environ()
        self._expected_length = None
        body: _RequestBody | None = None
        length = _content_length(environ)
        if length is not None and "wsgi.input_terminated" not in environ:
            body = _RequestBody(self.rfile, length)
            environ["wsgi.input"] = body
        else:
            self.close_connection = True  # a chunked or unsized body: we cannot find its end
        response: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if exc_info is not None and sent:
                raise exc_info[1].with_traceback(exc_info[2])
            response[:] = [status, headers]
            return write

        sent: list[int] = []  # [bytes of body written] once the headers are out

        def write(data: bytes) -> None:
            if not sent:
                sent.append(0)
                head = self._head(*response)
                self.wfile.write(head + data)
            else:
                self.wfile.write(data)
            sent[0] += len(data)

        try:
            result: Iterable[bytes] = self.server.app(environ, start_response)
            try:
                head_at_once = bool(environ.get(HEAD_AT_ONCE_KEY))
                for chunk in result:
                    # An empty chunk sends nothing, but a stream that asked for its head at
                    # once (peer frames) gets it with its first one.
                    if chunk or (head_at_once and not sent and response):
                        write(chunk)
                if not sent:
                    write(b"")
            finally:
                close = getattr(result, "close", None)
                if callable(close):
                    close()
        except (TimeoutError, ConnectionError):
            raise  # handle() treats these as a dropped connection
        except Exception:
            self.close_connection = True
            log.exception("Error on request %s %s", self.command, self.path)
            if not sent:
                self.wfile.write(
                    b"HTTP/1.1 500 INTERNAL SERVER ERROR\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            return
        if not self.close_connection and sent and self._expected_length != sent[0]:
            self.close_connection = True  # the body does not match what the headers announced
        if not self.close_connection and (body is None or not body.drain(DRAIN_LIMIT)):
            self.close_connection = True
        if getattr(self.server, "closing", False):
            self.close_connection = True
        if self.close_connection and (body is None or body.remaining > 0) and sent:
            self._linger()

    def _linger(self) -> None:
        """Close without resetting a client that is still sending its body (nginx's lingering
        close): an answer sent early (a 413) and a close with unread data in the kernel's
        buffer make it send a reset, and the client fails on a broken pipe before it reads the
        answer. So: flush, shut down our side, read and discard what still comes, then close."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_IDLE)
            deadline = time.monotonic() + LINGER_SECONDS
            left = LINGER_BYTES
            while left > 0 and time.monotonic() < deadline:
                chunk = self.connection.recv(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)

    _expected_length: int | None = None

    def _head(self, status: str, headers: list[tuple[str, str]]) -> bytes:
        """The status line and headers; decides whether the connection stays open."""
        code = int(status.split(None, 1)[0])
        names = {name.lower(): value for name, value in headers}
        expected: int | None = None
        if self.command == "HEAD" or code in _NO_BODY or 100 <= code < 200:
            expected = 0
        elif "content-length" in names:
            try:
                expected = int(names["content-length"])
            except ValueError:
                expected = None
        self._expected_length = expected
        if expected is None or names.get("connection", "").lower() == "close":
            self.close_connection = True
        lines = [f"{self.protocol_version} {status}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if "server" not in names:
            lines.append(f"Server: {self.version_string()}")
        if "date" not in names:
            lines.append(f"Date: {self.date_time_string()}")
        if self.close_connection and "connection" not in names:
            lines.append("Connection: close")
        if _access_log.isEnabledFor(logging.INFO):  # formatting the line costs 3% of a POST
            self.log_request(code)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class BindError(Exception):
    """The server's address could not be bound (``os_error`` says why)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(os_error.strerror or str(os_error))
        self.os_error = os_error


class KeepAliveServer(ThreadedWSGIServer):
    """Werkzeug's threaded server with :class:`KeepAliveRequestHandler`; closing it also closes
    the kept-alive connections, so no idle connection keeps reaching a stopped app.

    With ``ssl_context`` it serves TLS: the listening socket is wrapped, and each connection's
    handshake runs in its own thread (Werkzeug's would run it in the accept loop)."""

    def __init__(
        self,
        host: str,
        port: int,
        app: Any,
        ssl_context: ssl.SSLContext | None = None,
        *,
        handler: type[KeepAliveRequestHandler] = KeepAliveRequestHandler,
    ) -> None:
        self.closing = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(host, port, app, handler=handler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
            self.ssl_context = ssl_context  # Werkzeug reads it: wsgi.url_scheme is https

    def server_bind(self) -> None:
        # Werkzeug answers a failed bind by printing and exiting the process; a library must
        # raise instead, so the error leaves as something Werkzeug does not catch.
        try:
            super().server_bind()
        except OSError as exc:
            self.socket.close()
            raise BindError(exc) from exc

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def server_close(self) -> None:
        self.closing = True
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)  # wakes the handler waiting to read


def _content_length(environ: dict[str, Any]) -> int | None:
    value = environ.get("CONTENT_LENGTH", "")
    if value == "":
        return None if environ.get("HTTP_TRANSFER_ENCODING") else 0
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None
