"""Peer frames: many peer exchanges carried by one ``POST {url_prefix}/raft``.

A heartbeat is a few dozen bytes, yet as a request of its own it pays for a request line,
headers, a WSGI environ, Flask's request context, routing and a response object: measured
here (``benchmarks/http_floor.py``) 1,000 µs of server CPU at the heartbeat's pace, against
200 µs for the same exchange as a frame on an open request. So a sender that learns that its
peer takes frames (the peer's answers carry ``X-Catga-Frames: 1``) opens one chunked ``POST``
to the same route, with ``Content-Type: application/vnd.catga.frames``, and sends each batch
as a frame in an HTTP chunk; the peer streams an answer frame back for each, in order.

A frame is what a peer request carries, without HTTP: its headers (the same signature,
timestamp, sender and reply headers, checked frame by frame as a request would be) and its
body. An answer frame carries the status and headers of the answer a request would get, and
its body. On the wire, both are::

    meta length (4 bytes, big-endian) | body length (4 bytes) | meta (JSON object) | body

where the meta of an answer holds its status under ``":status"``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from ..errors import CatgaError

__all__ = [
    "FRAMES_CONTENT_TYPE",
    "FRAMES_ENVIRON_KEY",
    "HEADER_FRAMES",
    "MAX_META_BYTES",
    "FrameError",
    "decode_answer",
    "encode_answer",
    "encode_frame",
    "read_frame",
]

FRAMES_CONTENT_TYPE = "application/vnd.catga.frames"
HEADER_FRAMES = "X-Catga-Frames"
"""On a peer's answer: ``1`` when it takes frames on this route."""
FRAMES_ENVIRON_KEY = "catga.frames"
"""Set in the WSGI environ by a server that streams a request and its answer both ways at once
(the node's embedded server); without it, a peer never offers frames."""
HEAD_AT_ONCE_KEY = "catga.head_at_once"
"""Set in the WSGI environ by a streaming view whose first, empty chunk must send the answer's
head at once (the embedded server otherwise waits for a chunk with bytes, as PEP 3333 asks)."""
MAX_META_BYTES = 64 << 10

_HEAD = struct.Struct(">II")


class FrameError(CatgaError):
    """A frame that cannot be read: a short read, a size past its limit, a meta that is not a
    JSON object of strings. The exchange cannot go on after one."""


class FrameTooLarge(FrameError):
    """A frame whose body exceeds the receiver's limit: answered with a 413, then the exchange
    ends (the rest of that body is not read)."""


def encode_frame(meta: dict[str, Any], body: bytes) -> bytes:
    encoded = json.dumps(meta, separators=(",", ":")).encode()
    return _HEAD.pack(len(encoded), len(body)) + encoded + body


def encode_answer(status: int, headers: dict[str, str], body: bytes) -> bytes:
    return encode_frame({**headers, ":status": status}, body)


def read_frame(read: Callable[[int], bytes], max_body: int) -> tuple[dict[str, str], bytes] | None:
    """The next frame from ``read`` (a stream's ``read``): (meta, body), None at a clean end.

    A meta's values other than ``":status"`` are strings; header names are kept as sent."""
    head = _read_exactly(read, _HEAD.size, at_start=True)
    if head is None:
        return None
    meta_size, body_size = _HEAD.unpack(head)
    if meta_size > MAX_META_BYTES:
        raise FrameError(f"a frame's meta of {meta_size} bytes exceeds {MAX_META_BYTES}")
    if body_size > max_body:
        raise FrameTooLarge(f"a frame's body of {body_size} bytes exceeds the limit of {max_body}")
    raw = _read_exactly(read, meta_size + body_size)
    assert raw is not None
    try:
        meta = json.loads(raw[:meta_size])
    except ValueError as exc:
        raise FrameError(f"a frame's meta is not JSON: {exc}") from None
    if not isinstance(meta, dict) or not all(
        isinstance(value, str) or name == ":status" for name, value in meta.items()
    ):
        raise FrameError("a frame's meta must be a JSON object of strings")
    return meta, raw[meta_size:]


def decode_answer(meta: dict[str, Any], body: bytes) -> tuple[int, bytes, dict[str, str]]:
    """An answer frame as a request's answer: (status, body, headers in Title-Case)."""
    status = meta.pop(":status", None)
    if not isinstance(status, int) or not 100 <= status < 600:
        raise FrameError(f"an answer frame's status must be an HTTP status, not {status!r}")
    return status, body, {name.title(): value for name, value in meta.items()}


def _read_exactly(
    read: Callable[[int], bytes], size: int, *, at_start: bool = False
) -> bytes | None:
    data = read(size)
    while len(data) < size:
        more = read(size - len(data))
        if not more:
            if at_start and not data:
                return None
            raise FrameError(f"the exchange ended inside a frame ({len(data)} of {size} bytes)")
        data += more
    return data
