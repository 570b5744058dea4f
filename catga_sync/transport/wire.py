"""The peer RPC wire format, shared by the HTTP sender, the blueprint and the in-memory hub.

A batch is one JSON object, ``{"protocol": 1, "messages": [...]}``, each message encoded by
:func:`catga_sync.raft.codec.message_to_dict`. Decoding is all or nothing: one bad message and the
whole batch is refused, so a receiver never sees half of what a peer sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidMessageError
from ..raft import Message
from ..raft.codec import message_from_dict, message_to_dict

PROTOCOL_VERSION = 1
"""Bumped whenever a batch or a message changes incompatibly; a node refuses other versions."""

DEFAULT_URL_PREFIX = "/_catga"
RAFT_PATH = "/raft"
"""``POST {url_prefix}/raft`` carries batches; ``GET {url_prefix}/raft/info`` describes the node."""
INFO_PATH = "/raft/info"

DEFAULT_MAX_BODY_BYTES = 8 << 20
"""Largest batch body a node accepts (``ClusterConfig.max_message_bytes``). One AppendEntries
carries up to ``max_entries_bytes`` of entry data, counted as ``len(data) + 16`` per entry; as
JSON an entry takes about ``4/3 * len(data) + 56`` bytes, so up to 3.5 times its count for tiny
entries. Senders split batches to stay below the limit."""
DEFAULT_SIGNATURE_WINDOW = 30.0
"""Seconds a signed request's timestamp may differ from the receiver's clock."""

HEADER_SENDER = "X-Catga-Sender"
"""The sender's Raft id (its normalized endpoint); every message's ``from`` must equal it."""
HEADER_NODE = "X-Catga-Node"
"""The sender's human node name, for logs only (not signed, not trusted)."""
HEADER_REPLY = "X-Catga-Reply"
"""On a peer RPC request, ``inline``: answer with the messages for the sender in the response
body (200) once they are persisted, instead of 202 and a request of our own later."""
INLINE_REPLY = "inline"
HEADER_STREAM = "X-Catga-Stream"
"""On a pipelined peer RPC request, ``<stream>:<seq>``: its place among its sender's requests,
which the receiver queues in that order (:mod:`catga_sync.transport.arrival`). Not signed: it
orders requests, it authorizes nothing."""
HEADER_WORKER_TOKEN = "X-Catga-Worker-Token"
"""On a request a gunicorn worker relays to the worker that hosts the node."""
HEADER_TIMESTAMP = "X-Catga-Timestamp"
HEADER_SIGNATURE = "X-Catga-Signature"

MAX_NODE_NAME_LENGTH = 255


class WireFormatError(InvalidMessageError):
    """A batch broke the wire format; ``code`` is the machine-readable error of the 400 reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def normalize_url_prefix(url_prefix: str) -> str:
    """``"/_catga"`` for ``"_catga"``, ``"/_catga/"`` and ``"/_catga"``; ``""`` for the root."""
    stripped = url_prefix.strip().strip("/")
    return f"/{stripped}" if stripped else ""


def seconds_within(value: object, limit: float, *, code: str, name: str) -> float:
    """``value`` as a number of seconds in (0, ``limit``]; WireFormatError (400) otherwise."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= limit:
        raise WireFormatError(code, f"{name} must be a number of seconds in (0, {limit:g}]")
    return float(value)


def encode_batch(messages: Sequence[Message]) -> bytes:
    """The JSON body carrying ``messages`` (compact, UTF-8)."""
    return _wrap([_encode_one(m) for m in messages])


def encode_batches(messages: Sequence[Message], max_bytes: int) -> list[tuple[bytes, int]]:
    """Bodies of at most ``max_bytes`` each (a lone message larger than that gets its own),
    with the number of messages in each, in order."""
    overhead = len(_wrap([]))
    out: list[tuple[bytes, int]] = []
    parts: list[bytes] = []
    size = overhead
    for message in messages:
        part = _encode_one(message)
        extra = len(part) + (1 if parts else 0)  # the comma
        if parts and size + extra > max_bytes:
            out.append((_wrap(parts), len(parts)))
            parts, size, extra = [], overhead, len(part)
        parts.append(part)
        size += extra
    if parts:
        out.append((_wrap(parts), len(parts)))
    return out


_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""One compact encoder (``json.dumps`` with separators builds a new one per call)."""


def _encode_one(message: Message) -> bytes:
    return _ENCODER.encode(message_to_dict(message)).encode()


def _wrap(parts: list[bytes]) -> bytes:
    head = f'{{"protocol":{PROTOCOL_VERSION},"messages":['.encode()
    return head + b",".join(parts) + b"]}"


def decode_batch(body: bytes) -> list[Message]:
    """Parse and validate a whole batch; raises :class:`WireFormatError` at the first problem."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireFormatError(
            "malformed_json",
            f"The request body is not valid JSON ({exc}). Send a UTF-8 JSON object "
            f'{{"protocol": {PROTOCOL_VERSION}, "messages": [...]}}.',
        ) from None
    if not isinstance(raw, dict):
        raise WireFormatError(
            "bad_batch",
            f"Expected a JSON object with 'protocol' and 'messages', got a JSON {_json_kind(raw)}.",
        )
    extra = set(raw) - {"protocol", "messages"}
    if extra:
        raise WireFormatError(
            "bad_batch",
            f"Unknown field(s) {sorted(extra)} in the batch; only 'protocol' and 'messages' "
            f"are allowed in protocol {PROTOCOL_VERSION}.",
        )
    if "protocol" not in raw:
        raise WireFormatError(
            "bad_batch",
            f"The batch has no 'protocol' field; send \"protocol\": {PROTOCOL_VERSION}.",
        )
    protocol = raw["protocol"]
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise WireFormatError(
            "bad_batch", f"'protocol' must be an integer, got {_json_kind(protocol)}."
        )
    if protocol != PROTOCOL_VERSION:
        raise WireFormatError(
            "unsupported_protocol",
            f"This node speaks peer protocol {PROTOCOL_VERSION}, the sender used {protocol}. "
            "Run the same catga_sync version on every node of the cluster (upgrade one node "
            "at a time only between compatible versions).",
        )
    messages = raw.get("messages")
    if not isinstance(messages, list):
        raise WireFormatError(
            "bad_batch",
            "The batch needs a 'messages' field holding a JSON array of Raft messages.",
        )
    decoded: list[Message] = []
    for k, item in enumerate(messages):
        try:
            decoded.append(message_from_dict(item))
        except InvalidMessageError as exc:
            raise WireFormatError(
                "invalid_message",
                f"messages[{k}] is invalid: {exc}. Nothing in this batch was delivered.",
            ) from None
    return decoded


def check_addressing(messages: Sequence[Message], *, sender: str, receiver: str) -> None:
    """Every message must come from ``sender`` (the authenticated header) and go to
    ``receiver`` (this node); raises :class:`WireFormatError` otherwise."""
    for k, message in enumerate(messages):
        if message.to != receiver:
            raise WireFormatError(
                "misaddressed",
                f"messages[{k}] is addressed to {message.to!r}, but this node is {receiver!r}. "
                "Every node must list its peers by the same normalized endpoints "
                "(scheme://host:port) that the peers use as their own local endpoint.",
            )
        if message.frm != sender:
            raise WireFormatError(
                "sender_mismatch",
                f"messages[{k}] claims to come from {message.frm!r}, but the request was sent "
                f"by {sender!r} ({HEADER_SENDER}). A node may only send its own messages.",
            )


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
