"""A backup: one snapshot of the replicated state as a JSON document that checks itself.

``GET /_catga/admin/snapshot`` answers it, ``catga snapshot save FILE`` writes it and
``catga restore FILE`` reads it back (:mod:`catga_sync.storage.offline`). The document::

    {"format": "catga-snapshot/1", "index": 1234, "term": 3,
     "membership": {"voters": ["http://a:5000", ...], "learners": []},
     "size": 5678, "sha256": "9f2c...", "data": "<base64 of the snapshot bytes>"}

``data`` is the snapshot the Raft loop takes for log compaction (every state machine, the
client sessions, the lock table); ``index`` and ``term`` are those of the last entry it
includes; ``membership`` is the configuration in force there. ``sha256`` covers everything a
restore uses: it is the digest of the canonical header line
``{"format":...,"index":...,"membership":{...},"term":...}`` (sorted keys, no spaces), a
newline, then the snapshot bytes. So a changed digit, a cut-off file or a wrong byte in the
data fails the check, and :func:`read_backup` refuses the file before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import BackupFileError, InvalidMessageError
from ..raft import Snapshot
from ..raft.codec import membership_to_dict, snapshot_meta_from_dict

__all__ = ["BACKUP_FORMAT", "backup_chunks", "backup_document", "read_backup"]

BACKUP_FORMAT = "catga-snapshot/1"
_FIELDS = {"format", "index", "term", "membership", "size", "sha256", "data"}
_CHUNK = 3 * 16384
"""Bytes of snapshot data per streamed piece (a multiple of 3: base64 pieces concatenate)."""


def _digest(index: int, term: int, membership: Mapping[str, Any], data: bytes) -> str:
    header = {"format": BACKUP_FORMAT, "index": index, "term": term, "membership": membership}
    line = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(line + b"\n" + data).hexdigest()


def _header(snapshot: Snapshot) -> dict[str, Any]:
    meta = snapshot.meta
    membership = membership_to_dict(meta.membership)
    return {
        "format": BACKUP_FORMAT,
        "index": meta.index,
        "term": meta.term,
        "membership": membership,
        "size": len(snapshot.data),
        "sha256": _digest(meta.index, meta.term, membership, snapshot.data),
    }


def backup_document(snapshot: Snapshot) -> dict[str, Any]:
    """The backup document of ``snapshot``, as a dict (see the module docstring)."""
    return {**_header(snapshot), "data": base64.b64encode(snapshot.data).decode("ascii")}


def backup_chunks(snapshot: Snapshot) -> Iterator[bytes]:
    """The same document as JSON text, piece by piece: the header, then the base64 data in
    slices, so an answer never holds a second, encoded copy of a large state at once."""
    head = json.dumps(_header(snapshot))
    yield (head[:-1] + ', "data": "').encode("ascii")
    data = memoryview(snapshot.data)
    for start in range(0, len(data), _CHUNK):
        yield base64.b64encode(data[start : start + _CHUNK])
    yield b'"}'


def read_backup(raw: bytes | str | Mapping[str, Any], where: str) -> Snapshot:
    """The snapshot in a backup document (its bytes, text or parsed JSON), checked: the
    format, every field, the size and the checksum. Raises :class:`BackupFileError` naming
    ``where`` (the file, or the node that answered) and what is wrong."""

    def refuse(problem: str) -> BackupFileError:
        return BackupFileError(
            f"{where} is not a usable catga snapshot: {problem}; nothing was restored. "
            "Take a new one with `catga snapshot save FILE`"
        )

    document: Any = raw
    if isinstance(raw, (bytes, str)):
        if not raw.strip():
            raise refuse("it is empty")
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise refuse("it is not complete JSON (truncated or damaged?)") from None
    if not isinstance(document, Mapping):
        raise refuse(f"it holds a JSON {type(document).__name__}, not a snapshot document")
    if document.get("format") != BACKUP_FORMAT:
        raise refuse(f"its format is {document.get('format')!r}, expected {BACKUP_FORMAT!r}")
    missing = sorted(_FIELDS - set(document))
    if missing:
        raise refuse(f"it lacks the field(s) {missing}")
    membership = document["membership"]
    try:
        if not isinstance(membership, Mapping):
            raise InvalidMessageError("membership: not an object")
        meta = snapshot_meta_from_dict(
            {"index": document["index"], "term": document["term"], **membership}, "snapshot"
        )
    except InvalidMessageError as exc:
        raise refuse(f"its index, term or membership is invalid ({exc})") from None
    encoded = document["data"]
    if not isinstance(encoded, str):
        raise refuse('its "data" is not a base64 string')
    try:
        data = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise refuse('its "data" is not valid base64 (damaged or cut off?)') from None
    if document["size"] != len(data):
        raise refuse(f"it holds {len(data)} bytes of data, its header says {document['size']!r}")
    expected = _digest(meta.index, meta.term, membership_to_dict(meta.membership), data)
    if document["sha256"] != expected:
        raise refuse("its sha256 checksum does not match its contents (the file was changed)")
    return Snapshot(meta, data)
