"""Messages to and from JSON-ready dicts, validated strictly.

Anything from the network passes through :func:`message_from_dict` before it reaches a core:
wrong types, missing or unknown fields, negative or absurd terms and indexes, and entries that do
not follow each other all raise one error, :class:`~catga_sync.errors.InvalidMessageError`,
naming the field. Bytes travel as base64 strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from ..errors import InvalidMessageError
from .messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    ConfigChange,
    ConfigChangeType,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

MAX_INDEX = 2**63 - 1
"""Terms and indexes above this are absurd (and do not fit a SQL BIGINT)."""
MAX_NODE_ID_LENGTH = 255
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
"""What a node id may not hold (C0 and C1 controls, DEL)."""
MAX_CONTEXT_LENGTH = 1024

WIRE_NAMES: dict[type[Message], str] = {
    VoteRequest: "vote_request",
    VoteResponse: "vote_response",
    AppendEntries: "append_entries",
    AppendResponse: "append_response",
    Heartbeat: "heartbeat",
    HeartbeatResponse: "heartbeat_response",
    InstallSnapshot: "install_snapshot",
    SnapshotResponse: "snapshot_response",
    TimeoutNow: "timeout_now",
    ReadIndexRequest: "read_index_request",
    ReadIndexResponse: "read_index_response",
}
_BY_WIRE_NAME = {name: cls for cls, name in WIRE_NAMES.items()}
assert set(WIRE_NAMES) == set(MESSAGE_TYPES)


# --------------------------------------------------------------------------------------------
# Encoding


_WIRE_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {
    cls: tuple((f.name, "from" if f.name == "frm" else f.name) for f in fields(cls))
    for cls in WIRE_NAMES
}
"""(attribute, wire key) of each message type, in order: ``fields()`` per message cost more
than the rest of the encoding of a heartbeat."""


def message_to_dict(message: Message) -> dict[str, Any]:
    """A JSON-ready dict for ``message``; ``from`` stands for the ``frm`` field."""
    out: dict[str, Any] = {"type": WIRE_NAMES[type(message)]}
    for name, key in _WIRE_FIELDS[type(message)]:
        value = getattr(message, name)
        if isinstance(value, bytes):
            out[key] = _b64(value)
        elif isinstance(value, SnapshotMeta):
            out[key] = snapshot_meta_to_dict(value)
        elif isinstance(value, tuple):
            out[key] = [entry_to_dict(e) for e in value]
        else:
            out[key] = value
    return out


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "term": entry.term,
        "type": entry.type.value,
        "data": _b64(entry.data),
    }


def snapshot_meta_to_dict(meta: SnapshotMeta) -> dict[str, Any]:
    return {"index": meta.index, "term": meta.term, **membership_to_dict(meta.membership)}


def membership_to_dict(membership: Membership) -> dict[str, Any]:
    return {"voters": sorted(membership.voters), "learners": sorted(membership.learners)}


def encode_config_entry(change: ConfigChange, membership: Membership) -> bytes:
    """The data of a CONFIG entry: the change, and the whole membership it results in."""
    body = {"change": {"type": change.type.value, "node_id": change.node_id}}
    body.update(membership_to_dict(membership))
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------------------------
# Decoding


def message_from_dict(raw: object) -> Message:
    """Validate and build a message; raises :class:`InvalidMessageError` on anything amiss."""
    obj = _mapping(raw, "message")
    kind = obj.get("type")
    cls = _BY_WIRE_NAME.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        raise InvalidMessageError(
            f"unknown message type {kind!r}; expected one of {sorted(_BY_WIRE_NAME)}"
        )
    expected = {"type"} | {"from" if f.name == "frm" else f.name for f in fields(cls)}
    extra = set(obj) - expected
    if extra:
        raise InvalidMessageError(f"{kind}: unknown field(s) {sorted(extra)}")
    return _DECODERS[cls](_Reader(obj, kind))


def entry_from_dict(raw: object, where: str = "entry") -> Entry:
    obj = _mapping(raw, where)
    reader = _Reader(obj, where)
    extra = set(obj) - {"index", "term", "type", "data"}
    if extra:
        raise InvalidMessageError(f"{where}: unknown field(s) {sorted(extra)}")
    kind = reader.string("type", max_length=16)
    try:
        entry_type = EntryType(kind)
    except ValueError:
        raise InvalidMessageError(f"{where}.type: unknown entry type {kind!r}") from None
    entry = Entry(
        reader.index("index", low=1), reader.index("term", low=1), reader.data("data"), entry_type
    )
    if entry_type is EntryType.CONFIG:
        decode_config_entry(entry.data, where=f"{where}.data")
    return entry


def snapshot_meta_from_dict(raw: object, where: str = "meta") -> SnapshotMeta:
    obj = _mapping(raw, where)
    reader = _Reader(obj, where)
    extra = set(obj) - {"index", "term", "voters", "learners"}
    if extra:
        raise InvalidMessageError(f"{where}: unknown field(s) {sorted(extra)}")
    return SnapshotMeta(reader.index("index"), reader.index("term"), _membership(reader))


def decode_config_entry(
    data: bytes, where: str = "config entry"
) -> tuple[ConfigChange, Membership]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidMessageError(f"{where}: not JSON") from None
    obj = _mapping(obj, where)
    reader = _Reader(obj, where)
    change_obj = _mapping(obj.get("change"), f"{where}.change")
    change_reader = _Reader(change_obj, f"{where}.change")
    kind = change_reader.string("type", max_length=32)
    try:
        change_type = ConfigChangeType(kind)
    except ValueError:
        raise InvalidMessageError(f"{where}.change.type: unknown change type {kind!r}") from None
    change = ConfigChange(change_type, change_reader.node_id("node_id"))
    return change, _membership(reader)


def _membership(reader: _Reader) -> Membership:
    voters = reader.node_ids("voters")
    learners = reader.node_ids("learners")
    if not voters:
        raise InvalidMessageError(f"{reader.where}.voters: a membership needs a voter")
    if voters & learners:
        raise InvalidMessageError(
            f"{reader.where}: {sorted(voters & learners)} both voter and learner"
        )
    return Membership(voters, learners)


def _mapping(raw: object, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidMessageError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return raw


class _Reader:
    """Reads typed fields of one JSON object, naming the field in every error."""

    def __init__(self, obj: Mapping[str, Any], where: str) -> None:
        self.obj = obj
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.obj:
            raise InvalidMessageError(f"{self.where}: missing field {key!r}")
        return self.obj[key]

    def index(self, key: str, *, low: int = 0) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidMessageError(f"{self.where}.{key}: expected an integer, got {value!r}")
        if not low <= value <= MAX_INDEX:
            raise InvalidMessageError(f"{self.where}.{key}: {value} is out of range [{low}, 2^63)")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise InvalidMessageError(f"{self.where}.{key}: expected true or false, got {value!r}")
        return value

    def string(self, key: str, *, max_length: int, allow_empty: bool = False) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise InvalidMessageError(f"{self.where}.{key}: expected a string, got {value!r}")
        if len(value) > max_length or (not value and not allow_empty):
            raise InvalidMessageError(
                f"{self.where}.{key}: length {len(value)} outside [1, {max_length}]"
            )
        return value

    def node_id(self, key: str) -> str:
        value = self.string(key, max_length=MAX_NODE_ID_LENGTH)
        if _CONTROL_CHARACTERS.search(value):
            raise InvalidMessageError(f"{self.where}.{key}: control characters in a node id")
        return value

    def node_ids(self, key: str) -> frozenset[str]:
        value = self._get(key)
        if not isinstance(value, list):
            raise InvalidMessageError(f"{self.where}.{key}: expected a list of node ids")
        ids = frozenset(_Reader({key: v}, self.where).node_id(key) for v in value)
        if len(ids) != len(value):
            raise InvalidMessageError(f"{self.where}.{key}: duplicate node ids")
        return ids

    def data(self, key: str) -> bytes:
        value = self._get(key)
        if not isinstance(value, str):
            raise InvalidMessageError(f"{self.where}.{key}: expected base64 text")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessageError(f"{self.where}.{key}: invalid base64") from None
        if base64.b64encode(data).decode("ascii") != value:
            raise InvalidMessageError(f"{self.where}.{key}: non-canonical base64")
        return data

    def context(self, key: str) -> str:
        return self.string(key, max_length=MAX_CONTEXT_LENGTH, allow_empty=True)


def _header(r: _Reader) -> tuple[int, str, str]:
    return r.index("term"), r.node_id("from"), r.node_id("to")


def _vote_request(r: _Reader) -> VoteRequest:
    term, frm, to = _header(r)
    last_index, last_term = r.index("last_log_index"), r.index("last_log_term")
    if last_term > term:
        raise InvalidMessageError(f"{r.where}.last_log_term: {last_term} is above term {term}")
    return VoteRequest(term, frm, to, last_index, last_term, r.flag("pre_vote"), r.flag("transfer"))


def _vote_response(r: _Reader) -> VoteResponse:
    term, frm, to = _header(r)
    return VoteResponse(term, frm, to, r.flag("granted"), r.flag("pre_vote"))


def _append_entries(r: _Reader) -> AppendEntries:
    term, frm, to = _header(r)
    prev_index, prev_term = r.index("prev_index"), r.index("prev_term")
    if prev_term > term:
        raise InvalidMessageError(f"{r.where}.prev_term: {prev_term} is above term {term}")
    raw_entries = r._get("entries")
    if not isinstance(raw_entries, list):
        raise InvalidMessageError(f"{r.where}.entries: expected a list")
    entries = tuple(
        entry_from_dict(e, f"{r.where}.entries[{k}]") for k, e in enumerate(raw_entries)
    )
    previous_term = prev_term
    for k, entry in enumerate(entries):
        if entry.index != prev_index + 1 + k:
            raise InvalidMessageError(
                f"{r.where}.entries[{k}]: index {entry.index} leaves a gap "
                f"(expected {prev_index + 1 + k})"
            )
        if not previous_term <= entry.term <= term:
            raise InvalidMessageError(
                f"{r.where}.entries[{k}]: term {entry.term} outside [{previous_term}, {term}]"
            )
        previous_term = entry.term
    return AppendEntries(term, frm, to, prev_index, prev_term, entries, r.index("commit"))


def _append_response(r: _Reader) -> AppendResponse:
    term, frm, to = _header(r)
    return AppendResponse(
        term,
        frm,
        to,
        r.index("index"),
        r.flag("reject"),
        r.index("hint_index"),
        r.index("hint_term"),
    )


def _heartbeat(r: _Reader) -> Heartbeat:
    term, frm, to = _header(r)
    return Heartbeat(term, frm, to, r.index("commit"), r.context("context"))


def _heartbeat_response(r: _Reader) -> HeartbeatResponse:
    term, frm, to = _header(r)
    return HeartbeatResponse(term, frm, to, r.context("context"))


def _install_snapshot(r: _Reader) -> InstallSnapshot:
    term, frm, to = _header(r)
    meta = snapshot_meta_from_dict(r._get("meta"), f"{r.where}.meta")
    if meta.term > term:
        raise InvalidMessageError(f"{r.where}.meta.term: {meta.term} is above term {term}")
    checksum = r.string("checksum", max_length=64)
    if len(checksum) != 64 or any(c not in "0123456789abcdef" for c in checksum):
        raise InvalidMessageError(f"{r.where}.checksum: expected a SHA-256 hex digest")
    return InstallSnapshot(
        term, frm, to, meta, r.index("offset"), r.data("data"), r.flag("done"), checksum
    )


def _snapshot_response(r: _Reader) -> SnapshotResponse:
    term, frm, to = _header(r)
    return SnapshotResponse(
        term, frm, to, r.index("index"), r.index("offset"), r.flag("done"), r.flag("reject")
    )


def _timeout_now(r: _Reader) -> TimeoutNow:
    return TimeoutNow(*_header(r))


def _read_index_request(r: _Reader) -> ReadIndexRequest:
    term, frm, to = _header(r)
    context = r.string("context", max_length=MAX_CONTEXT_LENGTH)
    return ReadIndexRequest(term, frm, to, context)


def _read_index_response(r: _Reader) -> ReadIndexResponse:
    term, frm, to = _header(r)
    context = r.string("context", max_length=MAX_CONTEXT_LENGTH)
    raw_index = r._get("index")
    refused = isinstance(raw_index, int) and not isinstance(raw_index, bool) and raw_index == -1
    index = -1 if refused else r.index("index")
    return ReadIndexResponse(term, frm, to, context, index)


_DECODERS: dict[type[Message], Callable[[_Reader], Message]] = {
    VoteRequest: _vote_request,
    VoteResponse: _vote_response,
    AppendEntries: _append_entries,
    AppendResponse: _append_response,
    Heartbeat: _heartbeat,
    HeartbeatResponse: _heartbeat_response,
    InstallSnapshot: _install_snapshot,
    SnapshotResponse: _snapshot_response,
    TimeoutNow: _timeout_now,
    ReadIndexRequest: _read_index_request,
    ReadIndexResponse: _read_index_response,
}


def encode_message(message: Message) -> bytes:
    """Compact JSON bytes for ``message``."""
    return json.dumps(message_to_dict(message), separators=(",", ":")).encode()


def decode_message(body: bytes) -> Message:
    """Parse and validate JSON bytes; raises :class:`InvalidMessageError` when malformed."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidMessageError(f"message body is not JSON: {exc}") from None
    return message_from_dict(raw)
