"""Commands forwarded to the leader: the wire format of ``POST {url_prefix}/forward``.

A follower's :class:`~catga_sync.transport.forward_client.HttpClusterForwarder` encodes the
command by its mediator name and fields; the leader's forwarding endpoint
(:mod:`catga_sync.web.forwarding`) decodes and checks it, before anything runs, and answers
with the handler's outcome. The full exchange is in ``docs/request-forwarding.rst``::

    {"command": "create-order", "payload": {...}, "idempotency_key": "9f1c…", "deadline": 9.82}

Decoding needs the mediator (to know the command and rebuild its dataclass), never a node.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidCommandError, UnknownCommandTypeError
from .wire import WireFormatError, seconds_within

if TYPE_CHECKING:
    from ..mediator import Mediator

__all__ = [
    "DEFAULT_FORWARD_TIMEOUT",
    "FORWARD_PATH",
    "HEADER_HOP",
    "MAX_FORWARD_DEADLINE",
    "MAX_KEY_LENGTH",
    "ForwardRequest",
    "decode_forward_request",
    "encode_forward_request",
    "fingerprint",
]

FORWARD_PATH = "/forward"
"""``POST {url_prefix}/forward`` runs a command on the leader."""
HEADER_HOP = "X-Catga-Hop"
"""Marks a request that was already forwarded once: it is served where it lands, or refused."""
DEFAULT_FORWARD_TIMEOUT = 10.0
"""Seconds a forward may take in all, retries included, unless told otherwise."""
MAX_FORWARD_DEADLINE = 300.0
MAX_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A decoded ``POST {url_prefix}/forward`` body."""

    name: str
    command: Any
    payload: dict[str, Any]
    """The command re-encoded from the decoded dataclass (what the fingerprint covers)."""
    idempotency_key: str | None
    deadline: float
    """Seconds the caller still waits."""


def encode_forward_request(
    name: str, payload: Mapping[str, Any], idempotency_key: str | None, deadline: float
) -> bytes:
    body = {
        "command": name,
        "payload": dict(payload),
        "idempotency_key": idempotency_key,
        "deadline": round(deadline, 6),
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode_forward_request(body: bytes, mediator: Mediator) -> ForwardRequest:
    """Parse and check a forward request; :class:`WireFormatError` (a 400 answer) at the first
    problem, before anything runs."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WireFormatError(
            "malformed_json",
            'The body is not JSON. Send {"command": "<name>", "payload": {...}, '
            '"idempotency_key": "<key>", "deadline": <seconds>}.',
        ) from None
    allowed = {"command", "payload", "idempotency_key", "deadline"}
    if not isinstance(obj, dict) or not {"command", "payload"} <= set(obj) <= allowed:
        raise WireFormatError(
            "invalid_forward",
            'Expected a JSON object {"command": "<name>", "payload": {...}} with optional '
            '"idempotency_key" (string) and "deadline" (seconds); nothing else.',
        )
    name, payload = obj["command"], obj["payload"]
    if not isinstance(name, str) or not name:
        raise WireFormatError("invalid_forward", "command must be a non-empty string")
    key = obj.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable()
    ):
        raise WireFormatError(
            "invalid_forward",
            f"idempotency_key must be 1 to {MAX_KEY_LENGTH} printable characters, or null",
        )
    deadline = seconds_within(
        obj.get("deadline", DEFAULT_FORWARD_TIMEOUT),
        MAX_FORWARD_DEADLINE,
        code="invalid_forward",
        name="deadline",
    )
    try:
        command_type = mediator.type_of(name)
    except UnknownCommandTypeError as exc:
        raise WireFormatError("unknown_command", str(exc)) from None
    if not mediator.has_handler(command_type):
        raise WireFormatError(
            "unknown_command", f"command {name!r} has no handler on this node; nothing ran"
        )
    if not isinstance(payload, dict):
        raise WireFormatError("invalid_payload", "payload must be a JSON object of the fields")
    try:
        command = mediator.decode(name, payload)
        _name, canonical = mediator.encode(command)
    except InvalidCommandError as exc:
        raise WireFormatError("invalid_payload", str(exc)) from None
    return ForwardRequest(name, command, canonical, key, float(deadline))


def fingerprint(name: str, payload: Mapping[str, Any]) -> str:
    """A digest of a command, so that a key reused for another command is noticed. ``2`` and
    ``2.0`` are the same amount: the caller's dataclass may hold either."""
    canonical = json.dumps(
        {"command": name, "payload": _same_numbers(payload)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _same_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _same_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_numbers(v) for v in value]
    return value
