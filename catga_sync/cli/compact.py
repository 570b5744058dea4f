"""``catga compact --state DIR_OR_URL [--node-id ID]``: give a stopped node's SQLite file
back the space its snapshots freed.

New state files use incremental vacuum and shrink by themselves after every snapshot; a file
created before (``auto_vacuum=NONE``) only reuses its free pages. ``compact`` runs ``VACUUM``
on it, which rewrites the file without them and switches it to incremental vacuum. Offline:
the node must be stopped, and its ownership lock says whether it is (a running node is
refused). With a directory and no ``--node-id``, every ``*.sqlite3`` file in it is compacted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from ..storage import DEFAULT_TABLE_PREFIX, SqlStorage, open_storage
from ..storage.offline import Compacted, compact_sqlite
from .client import CliError

__all__ = ["add_parser", "compact"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("compact", help="shrink a stopped node's SQLite state file (VACUUM)")
    parser.add_argument(
        "--state", required=True, metavar="DIR_OR_URL", help="the state directory or sqlite:/// URL"
    )
    parser.add_argument(
        "--node-id", help="the node whose file to compact (default: every file in the directory)"
    )
    parser.add_argument("--table-prefix", default=DEFAULT_TABLE_PREFIX, help="SQL table prefix")
    parser.add_argument("--json", action="store_true", help="print the sizes as JSON")
    parser.set_defaults(offline=True, run=compact)


def _storages(args: argparse.Namespace) -> list[SqlStorage]:
    state: str = args.state
    if "://" in state:
        node_id = args.node_id or Path(state.split("?")[0]).stem
        found = [open_storage(node_id, state, table_prefix=args.table_prefix)]
    elif args.node_id:
        found = [open_storage(args.node_id, state, table_prefix=args.table_prefix)]
    else:
        directory = Path(state).expanduser()
        if not directory.is_dir():
            raise CliError(f"--state {state}: no such directory")
        files = sorted(directory.glob("*.sqlite3"))
        if not files:
            raise CliError(f"--state {state}: no *.sqlite3 state file in this directory")
        found = [open_storage(f.stem, state, table_prefix=args.table_prefix) for f in files]
    storages = [s for s in found if isinstance(s, SqlStorage) and s.is_sqlite]
    if len(storages) != len(found):
        raise CliError(
            f"--state {state} is not SQLite: only SQLite state files are compacted (PostgreSQL's "
            "autovacuum and MySQL's InnoDB reuse free space by themselves)"
        )
    return storages


def compact(args: argparse.Namespace, out: TextIO) -> int:
    done: list[Compacted] = [compact_sqlite(storage) for storage in _storages(args)]
    if args.json:
        rows = [{"file": str(c.path), "before": c.before, "after": c.after} for c in done]
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    for c in done:
        out.write(f"compacted {c.path}: {c.before} -> {c.after} bytes\n")
    return 0
