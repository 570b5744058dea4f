"""``catga status``: one row per member, as each node sees itself, and whether the cluster
is sound (exit 0: a quorum of voters answers and agrees on a leader; 2 otherwise)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from ..errors import CatgaError
from .client import ClusterClient

__all__ = ["add_parser", "cluster_status", "print_status", "run"]

COLUMNS = (
    ("node_id", "NODE"),
    ("endpoint", "ENDPOINT"),
    ("role", "ROLE"),
    ("term", "TERM"),
    ("leader", "LEADER"),
    ("commit_index", "COMMIT"),
    ("applied_index", "APPLIED"),
    ("lag", "LAG"),
    ("reachable", "REACHABLE"),
)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "status", parents=parents, help="ask every member how it is; exit 2 without quorum"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=lambda client, args, out: run(client, out, as_json=args.json))


def cluster_status(client: ClusterClient) -> dict[str, Any]:
    """The member list from the first node that answers, then each member's own view."""
    try:
        _url, document = client.first("GET", "members")
    except CatgaError:  # no leader to forward to: take the first node's own view
        _url, document = client.first("GET", "members", local=True)
    voters, learners = list(document["voters"]), list(document["learners"])
    views = {endpoint: client.local_view(endpoint) for endpoint in [*voters, *learners]}
    replication: dict[str, int] = dict(document.get("replication") or {})
    for view in views.values():  # the leader's own answer has the freshest replication
        if view is not None and view.get("replication"):
            replication = dict(view["replication"])
    last = replication.get("last_index")
    rows = []
    for endpoint in [*voters, *learners]:
        view = views[endpoint]
        node = view["node"] if view is not None else {}
        match = replication.get(endpoint)
        rows.append(
            {
                "node_id": node.get("node_id"),
                "endpoint": endpoint,
                "role": node.get("role") if endpoint in voters else "learner",
                "voter": endpoint in voters,
                "term": node.get("term"),
                "leader": node.get("leader"),
                "commit_index": node.get("commit_index"),
                "applied_index": node.get("applied_index"),
                "lag": None if last is None or match is None else max(0, last - match),
                "reachable": view is not None,
            }
        )
    answering = [r for r in rows if r["voter"] and r["reachable"]]
    leaders = {r["leader"] for r in answering}
    quorum = len(answering) > len(voters) // 2
    agreed = quorum and len(leaders) == 1 and None not in leaders
    return {
        "voters": voters,
        "learners": learners,
        "leader": next(iter(leaders)) if agreed else None,
        "quorum": quorum,
        "healthy": agreed,
        "members": rows,
    }


def print_status(status: dict[str, Any], out: TextIO) -> None:
    rows = [
        ["-" if r[k] is None else str(r[k]).lower() for k, _ in COLUMNS] for r in status["members"]
    ]
    for row, member in zip(rows, status["members"], strict=True):
        row[-1] = "yes" if member["reachable"] else "NO"
        if member["role"] == "learner":
            row[2] = "learner"
    table = [[title for _, title in COLUMNS], *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        out.write(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )
    if status["healthy"]:
        out.write(
            f"leader: {status['leader']} (a quorum of {len(status['voters'])} voters agrees)\n"
        )
    elif not status["quorum"]:
        out.write(f"no quorum: fewer than half of the {len(status['voters'])} voters answered\n")
    else:
        out.write("no agreed leader: the voters that answered do not name one leader\n")


def run(client: ClusterClient, out: TextIO, *, as_json: bool) -> int:
    """0 when a quorum answers and agrees on a leader; 2 otherwise, a cluster no node of which
    answers included (the worst case for a probe that tests for 2)."""
    try:
        status = cluster_status(client)
    except CatgaError as exc:
        print(f"catga status: unhealthy: {exc}", file=sys.stderr)
        return 2
    if as_json:
        out.write(json.dumps(status, indent=2) + "\n")
    else:
        print_status(status, out)
    return 0 if status["healthy"] else 2
