"""``catga snapshot save FILE``: back the cluster up into one file.

The leader takes the snapshot after a read barrier (``GET /_catga/admin/snapshot``; any node
given forwards to it). The answer is checked (format and sha256) before anything is written,
then written atomically: to a temporary file beside ``FILE``, flushed to disk, and renamed over
it, so ``FILE`` is either the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any, TextIO

from ..storage.backup import read_backup
from .client import CliError, ClusterClient

__all__ = ["add_parser", "save", "write_atomically"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("snapshot", help="back the cluster up (see also: catga restore)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{save}")
    saving = verbs.add_parser(
        "save", parents=parents, help="write a consistent snapshot, taken on the leader, to FILE"
    )
    saving.add_argument("file", metavar="FILE", help="where to write it (replaced atomically)")
    saving.add_argument("--json", action="store_true", help="print what was saved as JSON")
    saving.set_defaults(run=lambda client, args, out: save(client, out, args.file, args.json))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsynced, then
    renamed over ``path`` (and the directory fsynced). Raises CliError, leaving no file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # the rename itself, durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def save(client: ClusterClient, out: TextIO, file: str, as_json: bool = False) -> int:
    path = Path(file).expanduser()
    if path.is_dir():
        raise CliError(f"{path} is a directory: give the file to write, e.g. {path}/backup.json")
    url, document = client.first("GET", "snapshot")
    snapshot = read_backup(document, f"the snapshot {url} answered")
    data = json.dumps(document, separators=(",", ":")).encode("ascii")
    write_atomically(path, data)
    meta = snapshot.meta
    saved = {
        "file": str(path),
        "index": meta.index,
        "term": meta.term,
        "size": len(snapshot.data),
        "file_size": len(data),
        "sha256": document["sha256"],
        "voters": sorted(meta.membership.voters),
    }
    if as_json:
        out.write(json.dumps(saved, indent=2) + "\n")
        return 0
    out.write(
        f"saved {path}: index {meta.index}, term {meta.term}, {len(snapshot.data)} bytes of "
        f"state ({len(data)} bytes on disk)\n"
        f"sha256 {document['sha256']}\n"
        f"members when taken: {', '.join(saved['voters'])}\n"
    )
    return 0
