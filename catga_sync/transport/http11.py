"""A kept-alive HTTP/1.1 client connection for the requests nodes make to each other.

Every command crosses this path several times, so its cost counts: measured here,
:mod:`http.client` spends a sixth of a leader's CPU parsing response headers through the
:mod:`email` package. Peers answer with a handful of plain headers, which this reads as bytes.
It speaks only what the peer routes need: one ``POST`` at a time, a body with
``Content-Length``, and an answer with ``Content-Length``, chunked, or delimited by the close
(what a proxy in between might send); or, with :meth:`PeerConnection.exchange`, one open
chunked ``POST`` that carries an exchange per frame (:mod:`.frames`). Errors are those of
:mod:`http.client` (:class:`~http.client.HTTPException`) and sockets (:class:`OSError`,
``TimeoutError``).
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
from typing import BinaryIO

from .frames import FRAMES_CONTENT_TYPE, FrameError, decode_answer, encode_frame, read_frame

__all__ = ["FramesRefused", "FramesUnanswered", "PeerConnection"]

HEAD_WAIT_MIN = 1.0
"""Seconds an opening of frames waits for its head at least."""

MAX_ANSWER_FRAME_BYTES = 256 << 20
_FRAMING_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "host"})

_MAX_LINE = 65536
_MAX_HEADERS = 100


class PeerConnection:
    """One connection to ``host:port`` (TLS when ``https``), opened on the first request and
    kept alive until the peer closes it or :meth:`close` is called. ``ssl_context`` verifies
    the peer (and presents a client certificate); None: the system's certificate store."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        https: bool,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.https = https
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None
        self._framed = False
        """The open connection carries a framed POST whose answer head has been read."""
        authority = host if ":" not in host else f"[{host}]"  # an IPv6 literal
        self._host_header = f"{authority}:{port}".encode("latin-1")

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    @property
    def framed(self) -> bool:
        """Whether a framed ``POST`` is open on it: its next exchange must be a frame."""
        return self._framed

    def dropped(self) -> bool:
        """True when the idle connection was closed by the peer (it reads as ready)."""
        sock = self._sock
        if sock is None:
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def post(
        self, path: str, body: bytes, headers: dict[str, str], *, timeout: float | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """Send ``POST path`` and read the answer: (status, body, headers in Title-Case)."""
        if self._sock is None:
            self._connect()
        sock, reader = self._sock, self._reader
        assert sock is not None and reader is not None
        sock.settimeout(self.timeout if timeout is None else timeout)
        lines = [b"POST " + path.encode("latin-1") + b" HTTP/1.1", b"Host: " + self._host_header]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
        lines.append(b"Content-Length: " + str(len(body)).encode())
        try:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            status, answer_headers, keep = _read_head(reader)
            no_body = status in (204, 304) or 100 <= status < 200
            answer = b"" if no_body else _read_body(reader, answer_headers)
        except BaseException:
            self.close()
            raise
        delimited = no_body or "Content-Length" in answer_headers or _chunked(answer_headers)
        if not keep or not delimited:
            self.close()
        return status, answer, answer_headers

    def exchange(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        open_headers: dict[str, str],
        *,
        timeout: float | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One exchange as a frame on an open framed ``POST path`` (opened with
        ``open_headers`` on first use): (status, body, headers), as :meth:`post` answers.
        Raises :class:`FramesRefused` when the peer answers the opening as a plain request."""
        if self._sock is None:
            self._connect()
        sock, reader = self._sock, self._reader
        assert sock is not None and reader is not None
        sock.settimeout(self.timeout if timeout is None else timeout)
        frame = encode_frame(headers, body)
        chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
        try:
            if self._framed:
                sock.sendall(chunk)
            else:
                lines = [b"POST " + path.encode("latin-1") + b" HTTP/1.1"]
                lines.append(b"Host: " + self._host_header)
                lines += [
                    f"{name}: {value}".encode("latin-1")
                    for name, value in open_headers.items()
                    if name.lower() not in _FRAMING_HEADERS
                ]
                lines += [
                    b"Content-Type: " + FRAMES_CONTENT_TYPE.encode(),
                    b"Transfer-Encoding: chunked",
                ]
                sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + chunk)
                # A peer sends the head as it takes the opening, before it answers the first
                # frame: wait for it as for any answer (a second at least: a busy peer is not a
                # proxy that holds bodies), not as long as that frame may wait.
                head_wait = max(self.timeout, HEAD_WAIT_MIN)
                sock.settimeout(head_wait if timeout is None else min(timeout, head_wait))
                try:
                    status, answer_headers, _ = _read_head(reader)
                except TimeoutError as exc:
                    raise FramesUnanswered(str(exc) or "timed out") from None
                sock.settimeout(self.timeout if timeout is None else timeout)
                content_type = answer_headers.get("Content-Type", "").split(";", 1)[0].strip()
                # Frames are read raw until the close: an answer re-chunked or sized by a
                # proxy in between is refused rather than misread.
                delimited = "Content-Length" in answer_headers or _chunked(answer_headers)
                if status != 200 or content_type != FRAMES_CONTENT_TYPE or delimited:
                    no_body = status in (204, 304) or 100 <= status < 200
                    answer = b"" if no_body else _read_body(reader, answer_headers)
                    raise FramesRefused(status, answer, answer_headers)
                self._framed = True
            answer_frame = read_frame(reader.read, MAX_ANSWER_FRAME_BYTES)
            if answer_frame is None:
                raise http.client.RemoteDisconnected("the peer ended the framed exchange")
            return decode_answer(*answer_frame)
        except FrameError as exc:
            self.close()
            raise http.client.HTTPException(str(exc)) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        sock, reader = self._sock, self._reader
        self._sock = self._reader = None
        self._framed = False
        if reader is not None:
            reader.close()
        if sock is not None:
            sock.close()

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.https:
                context = self.ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = sock.makefile("rb")


class FramesRefused(http.client.HTTPException):
    """The peer answered a framed ``POST`` as a plain request: it does not take frames (an
    older version, a server or proxy that does not stream both ways), or refused the opening
    (the answer says why). The connection is closed."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"the peer answered the framed exchange with {status}")
        self.status = status
        self.body = body
        self.headers = headers


class FramesUnanswered(TimeoutError):
    """The peer did not answer the opening of a framed ``POST`` in time: perhaps a proxy in
    between that holds a request until its body ends. The connection is closed."""


def _read_line(reader: BinaryIO) -> bytes:
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise http.client.LineTooLong("header line")
    return line


def _read_head(reader: BinaryIO) -> tuple[int, dict[str, str], bool]:
    status_line = _read_line(reader)
    if not status_line:
        raise http.client.RemoteDisconnected("the peer closed the connection without answering")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise http.client.BadStatusLine(status_line.decode("latin-1", "replace").strip())
    version, status = parts[0], int(parts[1])
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = _read_line(reader)
        if line in (b"\r\n", b"\n", b""):
            break
        name, sep, value = line.partition(b":")
        if not sep:
            raise http.client.HTTPException(f"malformed header line {line[:80]!r}")
        headers[name.decode("latin-1").strip().title()] = value.decode("latin-1").strip()
    else:
        raise http.client.HTTPException(f"more than {_MAX_HEADERS} headers")
    connection = headers.get("Connection", "").lower()
    keep = connection != "close" and (version != b"HTTP/1.0" or connection == "keep-alive")
    return status, headers, keep


def _chunked(headers: dict[str, str]) -> bool:
    return "chunked" in headers.get("Transfer-Encoding", "").lower()


def _read_body(reader: BinaryIO, headers: dict[str, str]) -> bytes:
    if _chunked(headers):
        chunks: list[bytes] = []
        while True:
            size_line = _read_line(reader).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.HTTPException(f"bad chunk size {size_line[:20]!r}") from None
            if size == 0:
                while _read_line(reader) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(_read_exactly(reader, size))
            _read_line(reader)  # the CRLF after each chunk
    length = headers.get("Content-Length")
    if length is None:
        return reader.read()  # delimited by the close
    if not length.isdigit():
        raise http.client.HTTPException(f"bad Content-Length {length[:20]!r}")
    return _read_exactly(reader, int(length))


def _read_exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data
