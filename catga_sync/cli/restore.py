"""``catga restore FILE --state DIR_OR_URL --endpoint URL [--members URL,...]``: seed one
node's empty storage from a backup, so that a new cluster starts from it.

Run it once per node of the new cluster, each with its own ``--endpoint`` (and ``--state``)
and the same ``--members`` list: every node then holds the same snapshot with the same
membership, and they elect a leader among themselves when started with those members. The
endpoints may differ from the backed-up cluster's (as ``etcdctl snapshot restore`` allows):
the backup's membership is replaced by ``--members`` (default: ``--endpoint`` alone, a
one-node cluster). Offline: it talks to no node, and refuses a storage that holds state, a
running node (its ownership lock), and a damaged or truncated file — writing nothing then.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from ..config_values import derive_node_id, normalize_or_reason
from ..raft import Membership
from ..storage import DEFAULT_TABLE_PREFIX, open_storage
from ..storage.backup import read_backup
from ..storage.offline import seed_storage
from .client import CliError

__all__ = ["add_parser", "restore"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "restore", help="seed a new node's empty state from a snapshot file (node stopped)"
    )
    parser.add_argument("file", metavar="FILE", help="a file written by `catga snapshot save`")
    parser.add_argument(
        "--state", required=True, metavar="DIR_OR_URL", help="the new node's state directory or URL"
    )
    parser.add_argument("--endpoint", required=True, help="the new node's endpoint URL")
    parser.add_argument(
        "--members",
        metavar="URL[,URL...]",
        help="every member of the new cluster, the same list on each node (default: --endpoint)",
    )
    parser.add_argument("--node-id", help="the new node's id (default: derived from --endpoint)")
    parser.add_argument("--table-prefix", default=DEFAULT_TABLE_PREFIX, help="SQL table prefix")
    parser.add_argument("--json", action="store_true", help="print what was restored as JSON")
    parser.set_defaults(offline=True, run=restore)


def _endpoint(value: str, option: str) -> str:
    try:
        return normalize_or_reason(value)
    except ValueError as exc:
        raise CliError(
            f"{option}: {value!r} is not an endpoint ({exc}); write http://host:port"
        ) from None


def restore(args: argparse.Namespace, out: TextIO) -> int:
    endpoint = _endpoint(args.endpoint, "--endpoint")
    given = [m.strip() for m in (args.members or "").split(",") if m.strip()]
    members = sorted({_endpoint(m, "--members") for m in given} or {endpoint})
    if endpoint not in members:
        raise CliError(
            f"--endpoint {endpoint} is not one of --members ({', '.join(members)}): list every "
            "node of the new cluster in --members, this one included"
        )
    path = Path(args.file).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    snapshot = read_backup(raw, str(path))  # before the storage is touched: nothing written
    node_id = args.node_id or derive_node_id(endpoint)
    storage = open_storage(node_id, args.state, table_prefix=args.table_prefix)
    seeded = seed_storage(storage, snapshot, Membership(frozenset(members)))
    meta = seeded.meta
    if args.json:
        shown = {
            "node_id": node_id,
            "endpoint": endpoint,
            "state": storage.describe(),
            "index": meta.index,
            "term": meta.term,
            "size": len(seeded.data),
            "members": members,
        }
        out.write(json.dumps(shown, indent=2) + "\n")
        return 0
    out.write(
        f"restored node {node_id} ({endpoint}) into {storage.describe()}: index {meta.index}, "
        f"term {meta.term}, {len(seeded.data)} bytes of state\n"
        f"members: {', '.join(members)}\n"
        f"start it with these members (--members {','.join(members)}); restore each of them "
        "from the same file first\n"
    )
    return 0
