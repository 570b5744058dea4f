"""The wire codec: lossless round trips, and strict validation of everything from the network.

Every malformed input must raise :class:`~catga_sync.errors.InvalidMessageError` naming the
offending field, and nothing else may escape :func:`message_from_dict`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catga_sync.errors import InvalidMessageError
from catga_sync.raft.codec import (
    MAX_INDEX,
    WIRE_NAMES,
    decode_config_entry,
    decode_message,
    encode_config_entry,
    encode_message,
    message_from_dict,
    message_to_dict,
)
from catga_sync.raft.messages import (
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

MEMBERSHIP = Membership(frozenset({"n1", "n2", "n3"}), frozenset({"n4"}))
CONFIG_DATA = encode_config_entry(ConfigChange(ConfigChangeType.ADD_LEARNER, "n4"), MEMBERSHIP)
BINARY = bytes(range(256))
CHECKSUM = hashlib.sha256(b"snapshot bytes").hexdigest()


def _samples() -> dict[type[Message], Message]:
    return {
        VoteRequest: VoteRequest(7, "n1", "n2", 41, 6, pre_vote=True, transfer=False),
        VoteResponse: VoteResponse(7, "n2", "n1", granted=True, pre_vote=True),
        AppendEntries: AppendEntries(
            term=7,
            frm="n1",
            to="n2",
            prev_index=10,
            prev_term=5,
            entries=(
                Entry(11, 5, b""),
                Entry(12, 6, BINARY),
                Entry(13, 6, CONFIG_DATA, EntryType.CONFIG),
                Entry(14, 7, b'\x00\xff\n"{}'),
            ),
            commit=12,
        ),
        AppendResponse: AppendResponse(
            7, "n2", "n1", index=9, reject=True, hint_index=8, hint_term=4
        ),
        Heartbeat: Heartbeat(7, "n1", "n2", commit=12, context="read-1"),
        HeartbeatResponse: HeartbeatResponse(7, "n2", "n1", context=""),
        InstallSnapshot: InstallSnapshot(
            term=7,
            frm="n1",
            to="n2",
            meta=SnapshotMeta(100, 6, MEMBERSHIP),
            offset=4096,
            data=BINARY,
            done=True,
            checksum=CHECKSUM,
        ),
        SnapshotResponse: SnapshotResponse(7, "n2", "n1", index=100, offset=8192, done=True),
        TimeoutNow: TimeoutNow(7, "n1", "n2"),
        ReadIndexRequest: ReadIndexRequest(7, "n2", "n1", context="ctx-\u00e9\u4e2d"),
        ReadIndexResponse: ReadIndexResponse(7, "n1", "n2", context="ctx", index=12),
    }


SAMPLES = _samples()
assert set(SAMPLES) == set(MESSAGE_TYPES)
MESSAGE_IDS = [WIRE_NAMES[cls] for cls in MESSAGE_TYPES]


def encoded(cls: type[Message]) -> dict[str, Any]:
    """A fresh, valid wire dict for one message type (safe to mutate)."""
    return json.loads(json.dumps(message_to_dict(SAMPLES[cls])))


def rejects(raw: object, *needles: str) -> InvalidMessageError:
    """Assert ``raw`` is refused with an error naming every one of ``needles``."""
    with pytest.raises(InvalidMessageError) as info:
        message_from_dict(raw)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    return info.value


def _fields(cls: type[Message]) -> list[str]:
    return [key for key in encoded(cls) if key != "type"]


def _fields_of_kind(kind: type) -> list[tuple[type[Message], str]]:
    """(message type, wire field) for every top-level field whose sample value is a ``kind``."""
    out = []
    for cls in MESSAGE_TYPES:
        for key, value in encoded(cls).items():
            if key == "type" or key in ("data", "checksum"):
                continue
            if type(value) is kind:
                out.append((cls, key))
    return out


INT_FIELDS = _fields_of_kind(int)
BOOL_FIELDS = _fields_of_kind(bool)
STR_FIELDS = _fields_of_kind(str)


def _ids(pairs: list[tuple[type[Message], str]]) -> list[str]:
    return [f"{WIRE_NAMES[cls]}.{key}" for cls, key in pairs]


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=MESSAGE_IDS)
def test_message_survives_dict_and_json_round_trip(cls: type[Message]) -> None:
    message = SAMPLES[cls]
    wire = json.loads(json.dumps(message_to_dict(message)))
    assert wire["type"] == WIRE_NAMES[cls]
    assert message_from_dict(wire) == message


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=MESSAGE_IDS)
def test_encode_message_then_decode_message_is_identity(cls: type[Message]) -> None:
    message = SAMPLES[cls]
    body = encode_message(message)
    assert isinstance(body, bytes)
    assert decode_message(body) == message


def test_frm_travels_as_from_and_bytes_as_base64() -> None:
    wire = message_to_dict(SAMPLES[AppendEntries])
    assert "frm" not in wire
    assert wire["from"] == "n1"
    assert wire["entries"][1]["data"] == base64.b64encode(BINARY).decode("ascii")
    assert wire["entries"][2]["type"] == "config"


def test_config_entry_data_decodes_to_change_and_membership() -> None:
    change, membership = decode_config_entry(CONFIG_DATA)
    assert change == ConfigChange(ConfigChangeType.ADD_LEARNER, "n4")
    assert membership == MEMBERSHIP


def test_install_snapshot_keeps_meta_membership_and_checksum() -> None:
    decoded = decode_message(encode_message(SAMPLES[InstallSnapshot]))
    assert isinstance(decoded, InstallSnapshot)
    assert decoded.meta.membership == MEMBERSHIP
    assert decoded.checksum == CHECKSUM
    assert decoded.data == BINARY


def test_read_index_response_refusal_index_minus_one_round_trips() -> None:
    refused = ReadIndexResponse(3, "n1", "n2", context="c", index=-1)
    assert decode_message(encode_message(refused)) == refused


def test_largest_allowed_term_and_index_round_trip() -> None:
    message = AppendResponse(MAX_INDEX, "n1", "n2", index=MAX_INDEX, hint_index=MAX_INDEX)
    assert decode_message(encode_message(message)) == message


def test_node_id_of_maximum_length_is_accepted() -> None:
    message = TimeoutNow(1, "a" * 255, "b")
    assert decode_message(encode_message(message)) == message


_entry_data = st.binary(max_size=64)


@st.composite
def append_entries_messages(draw: st.DrawFn) -> AppendEntries:
    prev_index = draw(st.integers(0, 2**40))
    prev_term = draw(st.integers(0, 50))
    terms = sorted(draw(st.lists(st.integers(max(prev_term, 1), 60), max_size=6)))
    term = draw(st.integers(max([prev_term, *terms]), 100))
    entries = tuple(Entry(prev_index + 1 + k, t, draw(_entry_data)) for k, t in enumerate(terms))
    commit = draw(st.integers(0, prev_index + len(entries)))
    return AppendEntries(term, "n1", "n2", prev_index, prev_term, entries, commit)


@settings(max_examples=60, deadline=None)
@given(append_entries_messages())
def test_any_valid_append_entries_round_trips(message: AppendEntries) -> None:
    assert decode_message(encode_message(message)) == message


# --------------------------------------------------------------------------------------------
# Shape: not an object, unknown type, missing and extra fields


@pytest.mark.parametrize("raw", [None, 1, "append_entries", [], ["type"], 2.5, True])
def test_message_that_is_not_a_json_object_is_rejected(raw: object) -> None:
    rejects(raw, "message", "object")


@pytest.mark.parametrize("kind", ["nope", "", "AppendEntries", 3, None, ["append_entries"]])
def test_unknown_message_type_is_rejected(kind: object) -> None:
    wire = encoded(TimeoutNow)
    wire["type"] = kind
    rejects(wire, "type")


def test_message_without_type_is_rejected() -> None:
    wire = encoded(TimeoutNow)
    del wire["type"]
    rejects(wire, "type")


MISSING_CASES = [(cls, key) for cls in MESSAGE_TYPES for key in _fields(cls)]


@pytest.mark.parametrize(("cls", "key"), MISSING_CASES, ids=_ids(MISSING_CASES))
def test_every_missing_field_is_rejected_by_name(cls: type[Message], key: str) -> None:
    wire = encoded(cls)
    del wire[key]
    rejects(wire, repr(key))


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=MESSAGE_IDS)
def test_unknown_extra_field_is_rejected_by_name(cls: type[Message]) -> None:
    wire = encoded(cls)
    wire["sneaky_extra"] = 1
    rejects(wire, "sneaky_extra")


def test_python_field_name_frm_is_not_accepted_on_the_wire() -> None:
    wire = encoded(TimeoutNow)
    wire["frm"] = wire.pop("from")
    rejects(wire, "frm")


@pytest.mark.parametrize(
    ("key", "needle"),
    [("index", "index"), ("term", "term"), ("type", "type"), ("data", "data")],
)
def test_entry_missing_field_is_rejected_by_name(key: str, needle: str) -> None:
    wire = encoded(AppendEntries)
    del wire["entries"][0][key]
    rejects(wire, "entries[0]", needle)


def test_entry_unknown_extra_field_is_rejected() -> None:
    wire = encoded(AppendEntries)
    wire["entries"][1]["extra"] = True
    rejects(wire, "entries[1]", "extra")


def test_snapshot_meta_unknown_or_missing_field_is_rejected() -> None:
    wire = encoded(InstallSnapshot)
    wire["meta"]["size"] = 3
    rejects(wire, "meta", "size")
    wire = encoded(InstallSnapshot)
    del wire["meta"]["voters"]
    rejects(wire, "meta", "voters")


# --------------------------------------------------------------------------------------------
# Types


def _rejects_each(cls: type[Message], key: str, bad_values: list[object]) -> None:
    for bad in bad_values:
        wire = encoded(cls)
        wire[key] = bad
        rejects(wire, f".{key}")


@pytest.mark.parametrize(("cls", "key"), INT_FIELDS, ids=_ids(INT_FIELDS))
def test_integer_field_rejects_string_bool_float_and_containers(
    cls: type[Message], key: str
) -> None:
    _rejects_each(cls, key, ["5", True, False, 5.0, 0.0, None, [5], {"v": 5}])


@pytest.mark.parametrize(("cls", "key"), BOOL_FIELDS, ids=_ids(BOOL_FIELDS))
def test_boolean_field_rejects_int_string_and_null(cls: type[Message], key: str) -> None:
    _rejects_each(cls, key, [1, 0, "true", None, [True]])


@pytest.mark.parametrize(("cls", "key"), STR_FIELDS, ids=_ids(STR_FIELDS))
def test_string_field_rejects_list_int_null_and_object(cls: type[Message], key: str) -> None:
    _rejects_each(cls, key, [["n1"], 5, None, {"id": "n1"}, True])


@pytest.mark.parametrize("bad", [{"0": {}}, "entries", None, 3])
def test_entries_must_be_a_list(bad: object) -> None:
    wire = encoded(AppendEntries)
    wire["entries"] = bad
    rejects(wire, "entries")


@pytest.mark.parametrize("bad", [[1], ["entry"], [None], [[]]])
def test_each_entry_must_be_an_object(bad: list[object]) -> None:
    wire = encoded(AppendEntries)
    wire["entries"] = bad
    rejects(wire, "entries[0]")


@pytest.mark.parametrize("bad", [None, "meta", [], 7])
def test_snapshot_meta_must_be_an_object(bad: object) -> None:
    wire = encoded(InstallSnapshot)
    wire["meta"] = bad
    rejects(wire, "meta")


@pytest.mark.parametrize("bad", [5, None, ["AAAA"], True])
def test_binary_data_must_be_base64_text(bad: object) -> None:
    wire = encoded(InstallSnapshot)
    wire["data"] = bad
    rejects(wire, "data")


# --------------------------------------------------------------------------------------------
# Ranges


@pytest.mark.parametrize(("cls", "key"), INT_FIELDS, ids=_ids(INT_FIELDS))
def test_negative_or_absurd_integers_are_rejected(cls: type[Message], key: str) -> None:
    bad_values: list[object] = [-2, -(2**63), 2**63, 2**64, 10**30]
    if not (cls is ReadIndexResponse and key == "index"):
        bad_values.append(-1)  # -1 is the documented refusal there (tested separately)
    _rejects_each(cls, key, bad_values)


def test_absurd_term_2_pow_63_is_rejected() -> None:
    wire = encoded(TimeoutNow)
    wire["term"] = 2**63
    rejects(wire, "term", "range")


@pytest.mark.parametrize(("key", "bad"), [("index", 0), ("index", -1), ("term", 0), ("term", -3)])
def test_entry_index_and_term_start_at_one(key: str, bad: int) -> None:
    wire = {
        "type": "append_entries",
        "term": 1,
        "from": "n1",
        "to": "n2",
        "prev_index": 0,
        "prev_term": 0,
        "commit": 0,
        "entries": [{"index": 1, "term": 1, "type": "normal", "data": ""}],
    }
    message_from_dict(copy.deepcopy(wire))
    wire["entries"][0][key] = bad
    rejects(wire, f"entries[0].{key}")


@pytest.mark.parametrize("key", ["index", "term"])
def test_snapshot_meta_rejects_negative_index_and_term(key: str) -> None:
    wire = encoded(InstallSnapshot)
    wire["meta"][key] = -1
    rejects(wire, f"meta.{key}")


def test_read_index_response_accepts_minus_one_as_refusal() -> None:
    wire = encoded(ReadIndexResponse)
    wire["index"] = -1
    assert message_from_dict(wire) == ReadIndexResponse(7, "n1", "n2", context="ctx", index=-1)


@pytest.mark.parametrize("bad", [-2, -1.0, True, "-1", None])
def test_read_index_response_rejects_other_negatives_and_non_integers(bad: object) -> None:
    wire = encoded(ReadIndexResponse)
    wire["index"] = bad
    rejects(wire, ".index")


# --------------------------------------------------------------------------------------------
# Node ids and contexts


@pytest.mark.parametrize("key", ["from", "to"])
def test_empty_node_id_is_rejected(key: str) -> None:
    wire = encoded(VoteRequest)
    wire[key] = ""
    rejects(wire, f".{key}")


@pytest.mark.parametrize("key", ["from", "to"])
def test_node_id_with_control_character_is_rejected(key: str) -> None:
    for char in ["\x00", "\n", "\r", "\t", "\x1b", "\x1f"]:
        wire = encoded(VoteRequest)
        wire[key] = f"n{char}1"
        rejects(wire, f".{key}", "control")


@pytest.mark.parametrize("char", ["\x7f", "\x85", "\x9b"], ids=repr)
def test_node_id_with_del_or_c1_control_character_is_rejected(char: str) -> None:
    wire = encoded(VoteRequest)
    wire["from"] = f"n{char}1"
    rejects(wire, ".from")


@pytest.mark.parametrize("key", ["from", "to"])
def test_node_id_longer_than_255_characters_is_rejected(key: str) -> None:
    wire = encoded(AppendResponse)
    wire[key] = "n" * 256
    rejects(wire, f".{key}")


def test_voter_ids_in_snapshot_meta_are_validated_like_node_ids() -> None:
    for bad in (["n1", ""], ["n1", "x\x00"], ["n1", 5], ["n1", "n1"], "n1"):
        wire = encoded(InstallSnapshot)
        wire["meta"]["voters"] = bad
        rejects(wire, "meta.voters")


def test_snapshot_meta_with_node_both_voter_and_learner_is_rejected() -> None:
    wire = encoded(InstallSnapshot)
    wire["meta"]["learners"] = ["n1"]
    rejects(wire, "meta", "both voter and learner")


def test_snapshot_meta_without_voters_is_rejected() -> None:
    wire = encoded(InstallSnapshot)
    wire["meta"]["voters"] = []
    rejects(wire, "meta.voters")


def test_read_index_request_needs_a_context() -> None:
    wire = encoded(ReadIndexRequest)
    wire["context"] = ""
    rejects(wire, ".context")


@pytest.mark.parametrize("cls", [Heartbeat, HeartbeatResponse], ids=["heartbeat", "response"])
def test_heartbeat_context_may_be_empty_but_not_over_1024_chars(cls: type[Message]) -> None:
    wire = encoded(cls)
    wire["context"] = ""
    message_from_dict(wire)
    wire["context"] = "c" * 1024
    message_from_dict(wire)
    wire["context"] = "c" * 1025
    rejects(wire, ".context")


# --------------------------------------------------------------------------------------------
# Entries: consecutive, terms ordered, types and data


def _append_with_entries(entries: list[dict[str, Any]], **header: Any) -> dict[str, Any]:
    wire = {
        "type": "append_entries",
        "term": 5,
        "from": "n1",
        "to": "n2",
        "prev_index": 10,
        "prev_term": 2,
        "commit": 0,
        "entries": entries,
    }
    wire.update(header)
    return wire


def _e(index: int, term: int, data: bytes = b"x", kind: str = "normal") -> dict[str, Any]:
    return {"index": index, "term": term, "type": kind, "data": base64.b64encode(data).decode()}


def test_well_formed_entries_are_accepted() -> None:
    message = message_from_dict(_append_with_entries([_e(11, 2), _e(12, 3), _e(13, 5)]))
    assert isinstance(message, AppendEntries)
    assert [e.index for e in message.entries] == [11, 12, 13]


@pytest.mark.parametrize(
    "entries",
    [[_e(12, 2)], [_e(11, 2), _e(13, 2)], [_e(10, 2)], [_e(11, 2), _e(10, 2)]],
    ids=["first-after-gap", "gap-in-middle", "overlaps-prev", "goes-backwards"],
)
def test_entries_with_a_gap_are_rejected(entries: list[dict[str, Any]]) -> None:
    rejects(_append_with_entries(entries), "entries[", "gap")


def test_entries_with_duplicate_index_are_rejected() -> None:
    rejects(_append_with_entries([_e(11, 2), _e(11, 2)]), "entries[1]")


def test_entry_term_above_message_term_is_rejected() -> None:
    rejects(_append_with_entries([_e(11, 2), _e(12, 6)]), "entries[1]", "term")


def test_entries_with_decreasing_terms_are_rejected() -> None:
    rejects(_append_with_entries([_e(11, 4), _e(12, 3)]), "entries[1]", "term")


def test_first_entry_term_below_prev_term_is_rejected() -> None:
    rejects(_append_with_entries([_e(11, 1)]), "entries[0]", "term")


def test_prev_term_above_term_is_rejected() -> None:
    rejects(_append_with_entries([], prev_term=6), "prev_term")


def test_vote_request_last_log_term_above_term_is_rejected() -> None:
    wire = encoded(VoteRequest)
    wire["last_log_term"] = wire["term"] + 1
    rejects(wire, "last_log_term")


def test_install_snapshot_meta_term_above_term_is_rejected() -> None:
    wire = encoded(InstallSnapshot)
    wire["meta"]["term"] = wire["term"] + 1
    rejects(wire, "meta.term")


@pytest.mark.parametrize("bad", ["not base64!", "AAA", "A===", "QUJD\n", "ÄÖÜ="], ids=repr)
def test_invalid_base64_is_rejected(bad: str) -> None:
    entry = _e(11, 2)
    entry["data"] = bad
    rejects(_append_with_entries([entry]), "entries[0].data", "base64")


def test_invalid_base64_in_snapshot_data_is_rejected() -> None:
    wire = encoded(InstallSnapshot)
    wire["data"] = "%%%"
    rejects(wire, ".data", "base64")


@pytest.mark.parametrize("kind", ["NORMAL", "snapshot", "", "x" * 40])
def test_unknown_entry_type_is_rejected(kind: str) -> None:
    rejects(_append_with_entries([_e(11, 2, kind=kind)]), "entries[0].type")


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"config"', b"{"],
    ids=["empty", "text", "non-utf8", "list", "string", "truncated"],
)
def test_config_entry_whose_data_is_not_a_json_object_is_rejected(data: bytes) -> None:
    rejects(_append_with_entries([_e(11, 2, data, "config")]), "entries[0].data")


def _config_body(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "change": {"type": "add_voter", "node_id": "n4"},
        "voters": ["n1", "n4"],
        "learners": [],
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_config_entry_with_well_formed_data_is_accepted() -> None:
    message = message_from_dict(_append_with_entries([_e(11, 2, _config_body(), "config")]))
    assert isinstance(message, AppendEntries)
    assert message.entries[0].type is EntryType.CONFIG


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_config_body(voters=[]), "voters"),
        (json.dumps({"change": {"type": "add_voter", "node_id": "n4"}}).encode(), "voters"),
        (_config_body(voters=["n1", "n1"]), "voters"),
        (_config_body(learners=["n1"]), "both voter and learner"),
        (_config_body(change={"type": "promote", "node_id": "n4"}), "change.type"),
        (_config_body(change={"type": "add_voter", "node_id": ""}), "change.node_id"),
        (_config_body(change="add_voter"), "change"),
        (json.dumps({"voters": ["n1"], "learners": []}).encode(), "change"),
    ],
    ids=[
        "no-voters",
        "voters-missing",
        "duplicate-voter",
        "voter-and-learner",
        "unknown-change",
        "empty-node-id",
        "change-not-object",
        "change-missing",
    ],
)
def test_config_entry_with_invalid_membership_or_change_is_rejected(
    body: bytes, needle: str
) -> None:
    rejects(_append_with_entries([_e(11, 2, body, "config")]), "entries[0].data", needle)


def test_normal_entry_data_is_not_parsed_as_config() -> None:
    message = message_from_dict(_append_with_entries([_e(11, 2, b"not json")]))
    assert isinstance(message, AppendEntries)
    assert message.entries[0].data == b"not json"


# --------------------------------------------------------------------------------------------
# Snapshot checksum


@pytest.mark.parametrize(
    "bad",
    ["z" * 64, CHECKSUM.upper(), CHECKSUM[:-1], CHECKSUM + "0", "", " " + CHECKSUM[1:], 64],
    ids=["not-hex", "uppercase", "63-chars", "65-chars", "empty", "space", "int"],
)
def test_snapshot_checksum_must_be_64_lowercase_hex_digits(bad: object) -> None:
    wire = encoded(InstallSnapshot)
    wire["checksum"] = bad
    rejects(wire, "checksum")


# --------------------------------------------------------------------------------------------
# decode_message on raw bytes


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"{'type': 'timeout_now'}", b"\x00\x01", b"[1,]"],
    ids=["empty", "truncated", "text", "single-quotes", "binary", "trailing-comma"],
)
def test_decode_message_rejects_non_json_bytes(body: bytes) -> None:
    with pytest.raises(InvalidMessageError, match="JSON"):
        decode_message(body)


@pytest.mark.parametrize(
    "body",
    [b'{"type": "\xff\xfe"}', b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"],
    ids=["invalid-start-byte", "bad-continuation", "surrogate", "lone-continuation"],
)
def test_decode_message_rejects_non_utf8_bytes(body: bytes) -> None:
    with pytest.raises(InvalidMessageError):
        decode_message(body)


def test_decode_message_rejects_json_that_is_not_an_object() -> None:
    with pytest.raises(InvalidMessageError, match="object"):
        decode_message(b"[1, 2, 3]")


def test_decode_message_rejects_deeply_nested_json_without_recursion_error() -> None:
    with pytest.raises(InvalidMessageError):
        decode_message(b"[" * 100_000)


def test_config_entry_with_deeply_nested_data_is_rejected_without_recursion_error() -> None:
    rejects(_append_with_entries([_e(11, 2, b"[" * 100_000, "config")]), "entries[0].data")


# --------------------------------------------------------------------------------------------
# Properties: nothing but InvalidMessageError escapes, and accepted input is canonical

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-2, 2**64)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

_plausible = (
    st.integers(-2, 20)
    | st.booleans()
    | st.sampled_from(["n1", "n2", "", "ctx", "AAAA", CHECKSUM, "normal", "config"])
    | st.lists(
        st.fixed_dictionaries(
            {
                "index": st.integers(0, 13),
                "term": st.integers(0, 8),
                "type": st.sampled_from(["normal", "config", "x"]),
                "data": st.sampled_from(["", "eA==", base64.b64encode(CONFIG_DATA).decode(), "%"]),
            }
        ),
        max_size=3,
    )
    | st.fixed_dictionaries(
        {
            "index": st.integers(-1, 5),
            "term": st.integers(-1, 5),
            "voters": st.lists(st.sampled_from(["n1", "n2", ""]), max_size=2),
            "learners": st.lists(st.sampled_from(["n2", "n3"]), max_size=1),
        }
    )
    | json_values
)


@st.composite
def message_shaped_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid wire dict of a random type with some fields replaced, dropped or added."""
    wire = encoded(draw(st.sampled_from(MESSAGE_TYPES)))
    for key in list(wire):
        roll = draw(st.integers(0, 9))
        if roll in (7, 8):
            wire[key] = draw(_plausible)
        elif roll == 9:
            del wire[key]
    if draw(st.integers(0, 9)) == 0:
        wire.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=1)))
    return wire


def _decode_or_invalid(raw: object) -> Message | None:
    try:
        return message_from_dict(raw)
    except InvalidMessageError:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_values_raise_only_invalid_message_error(raw: object) -> None:
    message = _decode_or_invalid(raw)
    assert message is None or type(message) in MESSAGE_TYPES


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_shaped_dicts())
def test_message_shaped_dicts_raise_only_invalid_message_error(raw: dict[str, Any]) -> None:
    message = _decode_or_invalid(raw)
    if message is not None:
        # Sets (voters, learners) are re-encoded sorted, so compare after a second decode.
        assert message_from_dict(json.loads(encode_message(message))) == message


def _canonical(wire: dict[str, Any]) -> str:
    # JSON text distinguishes 1 from true and 1.0, which == on dicts does not.
    return json.dumps(wire, sort_keys=True)


_APPEND_WIRE = encoded(AppendEntries)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_APPEND_WIRE)),
    json_values | st.integers(0, 20) | st.sampled_from(["n1", "n9", "append_entries", []]),
)
def test_mutated_append_entries_is_rejected_or_re_encodes_identically(
    key: str, value: object
) -> None:
    wire = copy.deepcopy(_APPEND_WIRE)
    wire[key] = value
    message = _decode_or_invalid(copy.deepcopy(wire))
    if message is not None:
        assert isinstance(message, AppendEntries)
        assert _canonical(message_to_dict(message)) == _canonical(wire)


def test_decoding_does_not_mutate_its_input() -> None:
    wire = encoded(AppendEntries)
    before = copy.deepcopy(wire)
    message_from_dict(wire)
    assert wire == before


def test_entries_with_non_canonical_base64_are_rejected_or_re_encode_identically() -> None:
    wire = copy.deepcopy(_APPEND_WIRE)
    wire["entries"] = [{"index": 11, "term": 5, "type": "normal", "data": "AB=="}]
    message = _decode_or_invalid(copy.deepcopy(wire))
    if message is not None:
        assert _canonical(message_to_dict(message)) == _canonical(wire)
