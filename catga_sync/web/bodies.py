"""Request bodies at the public edge: read within a limit, JSON only, parsed strictly.

- A body over the limit is a **413**, answered without reading the rest; the embedded server
  then reads and discards what the client still sends before it closes (a lingering close,
  :class:`~catga_sync.web.keepalive.KeepAliveRequestHandler`), so the client reads the 413
  instead of failing on a broken pipe.
- A JSON route refuses another content type, or none, with **415**.
- The JSON itself must be exactly what a client means, or **400**: valid UTF-8; no lone
  surrogate (``"\\ud800"`` is valid JSON that no UTF-8 database can store) and no NUL in a
  string; no key twice in one object (Python would keep the last silently); at most
  :data:`MAX_DEPTH` levels of nesting; integers of at most :data:`MAX_INT_DIGITS` digits and
  finite numbers (no ``NaN``, no ``1e999``).

:func:`json_body` does all of it for the current Flask request and raises
:class:`~catga_sync.errors.RequestBodyError` (``status``, ``code``); :func:`read_body` and
:func:`parse_json` are its two halves.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import request
from werkzeug.wsgi import get_input_stream

from ..errors import RequestBodyError

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "json_body",
    "parse_json",
    "read_body",
    "require_json_content_type",
]

MAX_DEPTH = 32
"""Levels of nested arrays and objects a JSON body may have."""
MAX_INT_DIGITS = 64
"""Digits an integer in a JSON body may have: any real quantity fits, while a number of
thousands of digits (Python parses those, slowly) is refused."""
_CHUNK = 64 << 10


def read_body(limit: int, *, what: str = "The body") -> bytes:
    """The current request's body; a 413 RequestBodyError over ``limit`` bytes: from
    Content-Length before reading anything, or as soon as a chunked body passes it. The server
    reads and discards the rest after the answer, so the client sees the 413
    (:class:`~catga_sync.web.keepalive.KeepAliveRequestHandler`)."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit, what)
    # Our own limit, not the application's MAX_CONTENT_LENGTH, whose error would be HTML.
    stream = get_input_stream(request.environ, max_content_length=None)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, what)


def _too_large(limit: int, what: str) -> RequestBodyError:
    return RequestBodyError(413, "body_too_large", f"{what} must be at most {limit} bytes.")


def require_json_content_type() -> None:
    """415 unless the request says its body is JSON (``application/json`` or ``+json``)."""
    mimetype = request.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return
    shown = request.content_type or "none"
    raise RequestBodyError(
        415,
        "unsupported_media_type",
        f"The body must be JSON, sent with Content-Type: application/json (got {shown}).",
    )


def parse_json(raw: bytes, *, shape: str = "JSON") -> Any:
    """``raw`` as JSON, strictly (see the module docstring); a 400 RequestBodyError naming
    what is wrong otherwise. ``shape`` completes "The body must be ..." in the messages."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(shape, f"it is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except _Refused as exc:
        raise _invalid(shape, str(exc)) from None
    except RecursionError:
        raise _invalid(shape, f"it nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise _invalid(shape, f"it is not valid JSON ({exc})") from None
    _check_values(value, shape, 1)
    return value


def json_body(limit: int, *, shape: str = "a JSON value") -> Any:
    """The current request's JSON body: 415 without a JSON content type, 413 over ``limit``
    bytes, 400 unless it parses strictly. Nothing is read past ``limit``."""
    require_json_content_type()
    return parse_json(read_body(limit), shape=shape)


class _Refused(ValueError):
    """A hook of the parser refused a value (its message says which)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _Refused(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"it holds an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"it holds the number {text}, too large for a float")
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _check_values(value: Any, shape: str, depth: int) -> None:
    if depth > MAX_DEPTH and isinstance(value, (list, dict)):
        raise _invalid(shape, f"it nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_string(value, shape)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, shape, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_string(key, shape)
            _check_values(item, shape, depth + 1)


def _check_string(text: str, shape: str) -> None:
    if "\x00" in text:
        raise _invalid(shape, "a string holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(shape, "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None


def _invalid(shape: str, why: str) -> RequestBodyError:
    return RequestBodyError(400, "invalid_json", f"The body must be {shape}: {why}.")
