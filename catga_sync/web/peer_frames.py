"""The peer route's frames: one chunked ``POST {url_prefix}/raft`` that carries an exchange
per frame (the format: :mod:`catga_sync.transport.frames`).

The route offers frames (``X-Catga-Frames: 1`` on its answers) only where they can work: on a
server that streams a request body and its answer both ways at once (the node's embedded
server marks its environ so), and to a request that came straight from the peer, not through
a gunicorn worker's relay, which passes whole requests only. A sender opens frames only after
such an answer, so an older node, another WSGI server or a relay keeps one request per
exchange.

The opening request is signed over an empty body (with a cluster secret) or names its sender
(without one); then every frame is checked as a request would be — its signature, the replay
window, its size, its sender and addressing — and answered in order with what that request
would have got, a refusal included (the stream goes on). A frame whose body is over the
limit is answered with the request's 413, and a frame that cannot be read is logged; either
ends the exchange. The answer's head goes out as soon as the opening is taken, so a sender
learns at once that frames work, however long the first exchange takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NoReturn, Protocol

from flask import Response, request, stream_with_context
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge

from ..transport.frames import (
    FRAMES_CONTENT_TYPE,
    FRAMES_ENVIRON_KEY,
    HEAD_AT_ONCE_KEY,
    FrameError,
    FrameTooLarge,
    encode_answer,
    read_frame,
)
from ..transport.wire import HEADER_WORKER_TOKEN

__all__ = ["frames_offered", "open_frames"]

PeerHeaders = Headers | Mapping[str, str]
"""A request's headers, or a frame's."""
Answer = tuple[int, dict[str, str], bytes]
"""What a peer request is answered: (status, headers, body)."""
Exchange = Callable[[PeerHeaders, bytes, str, str], Answer]
"""Deliver one checked request's messages: (headers, body, signed path, sender) -> answer."""


class _Rejections(Protocol):
    def log(self, status: int, code: str, message: str) -> None: ...


class Gate(Protocol):
    """What the frames take of the peer route's checks (``blueprint.PeerGate``)."""

    max_body_bytes: int

    @property
    def rejections(self) -> _Rejections: ...

    def refuse(self, status: int, code: str, message: str) -> NoReturn: ...
    def sender(self, headers: PeerHeaders, method: str, path: str, body: bytes) -> str: ...
    def refusal(self, exc: Exception) -> Answer: ...


def frames_offered() -> bool:
    """Whether the request at hand may be offered frames (see the module docstring)."""
    return bool(request.environ.get(FRAMES_ENVIRON_KEY)) and (
        HEADER_WORKER_TOKEN not in request.headers
    )


def open_frames(gate: Gate, exchange: Exchange, path: str) -> Response:
    """The answer to a framed ``POST``: an answer frame for each frame, until the sender ends
    the request (or a frame cannot be read)."""
    if not frames_offered():
        gate.refuse(
            415,
            "frames_unsupported",
            "This server does not take peer frames (it does not stream both ways, or the "
            "request was relayed); send one request per exchange.",
        )
    gate.sender(request.headers, "POST", path, b"")
    stream = request.environ["wsgi.input"]
    request.environ[HEAD_AT_ONCE_KEY] = True  # with the empty first chunk below
    max_body = gate.max_body_bytes

    def answers() -> Iterator[bytes]:
        yield b""  # the head goes out now: the sender need not wait for the first answer
        while True:
            try:
                frame = read_frame(stream.read, max_body)
            except FrameTooLarge:
                yield encode_answer(*gate.refusal(RequestEntityTooLarge()))
                return  # the rest of its body is not read: the exchange cannot go on
            except FrameError as exc:
                gate.rejections.log(400, "bad_frame", f"{exc}; the exchange was ended")
                return
            except TimeoutError:
                raise  # idle past the server's timeout: the handler drops the connection
            except OSError:  # the sender closed without a last chunk (a stop, a timeout)
                return
            if frame is None:
                return
            meta, body = frame
            headers = {name.title(): value for name, value in meta.items()}
            try:
                sender = gate.sender(headers, "POST", path, body)
                status, answer_headers, answer = exchange(headers, body, path, sender)
            except Exception as exc:
                status, answer_headers, answer = gate.refusal(exc)
            yield encode_answer(status, answer_headers, answer)

    return Response(stream_with_context(answers()), 200, content_type=FRAMES_CONTENT_TYPE)
