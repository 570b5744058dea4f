"""``catga members list|add|remove``: the membership, and single-server changes to it."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from .client import ClusterClient

__all__ = ["add", "add_parser", "print_members", "remove", "show"]

ADD_TIMEOUT = 60.0


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("members", help="list, add or remove members")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{list,add,remove}")
    listing = verbs.add_parser(
        "list", parents=parents, help="the voters and learners, from the leader"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=lambda client, args, out: show(client, out, as_json=args.json))
    adding = verbs.add_parser(
        "add", parents=parents, help="add a node started with --join (learner, then voter)"
    )
    adding.add_argument("endpoint", metavar="ENDPOINT", help="the new node's endpoint URL")
    adding.add_argument("--learner", action="store_true", help="keep it a non-voting learner")
    adding.add_argument("--json", action="store_true", help="print JSON")
    adding.set_defaults(
        run=lambda client, args, out: add(
            client, out, args.endpoint, learner=args.learner, as_json=args.json
        )
    )
    removing = verbs.add_parser(
        "remove", parents=parents, help="remove a member (the leader hands over first)"
    )
    removing.add_argument("endpoint", metavar="ENDPOINT", help="the member's endpoint URL")
    removing.add_argument("--json", action="store_true", help="print JSON")
    removing.set_defaults(
        run=lambda client, args, out: remove(client, out, args.endpoint, as_json=args.json)
    )


def print_members(document: dict[str, Any], out: TextIO, as_json: bool) -> None:
    if as_json:
        shown = {k: document.get(k) for k in ("voters", "learners", "leader")}
        out.write(json.dumps(shown, indent=2) + "\n")
        return
    for endpoint in document["voters"]:
        mark = " (leader)" if endpoint == document.get("leader") else ""
        out.write(f"voter    {endpoint}{mark}\n")
    for endpoint in document["learners"]:
        out.write(f"learner  {endpoint}\n")


def show(client: ClusterClient, out: TextIO, *, as_json: bool) -> int:
    _url, document = client.first("GET", "members")
    print_members(document, out, as_json)
    return 0


def add(client: ClusterClient, out: TextIO, endpoint: str, *, learner: bool, as_json: bool) -> int:
    body = {"endpoint": endpoint, "voter": not learner, "timeout": ADD_TIMEOUT}
    saved, client.timeout = client.timeout, ADD_TIMEOUT + client.timeout
    try:
        _url, document = client.first("POST", "members", body)
    finally:
        client.timeout = saved
    print_members(document, out, as_json)
    return 0


def remove(client: ClusterClient, out: TextIO, endpoint: str, *, as_json: bool) -> int:
    _url, document = client.first("DELETE", "members", {"endpoint": endpoint})
    print_members(document, out, as_json)
    return 0
