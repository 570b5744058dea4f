"""``catga transfer-leader [--to ENDPOINT]``: move leadership (default: to the most
up-to-date follower), and say where it went."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from .client import ClusterClient

__all__ = ["add_parser", "transfer"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "transfer-leader", parents=parents, help="move leadership to another voter"
    )
    parser.add_argument(
        "--to", metavar="ENDPOINT", help="the new leader (default: the most up-to-date follower)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=lambda client, args, out: transfer(client, out, args.to, args.json))


def transfer(client: ClusterClient, out: TextIO, to: str | None, as_json: bool = False) -> int:
    _url, answer = client.first("POST", "transfer", {"to": to})
    if as_json:
        out.write(json.dumps({"leader": answer["leader"]}) + "\n")
    else:
        out.write(f"leader: {answer['leader']}\n")
    return 0
