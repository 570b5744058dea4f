"""Every checker over one finished run: the history the clients recorded, the final reads,
what the nodes logged and what the fenced resources (the outbox) accepted."""

from __future__ import annotations

from typing import Any

import requests

from .checkers import fencing, leases, lost_writes, singleton
from .cluster import FaultCluster
from .linearizability import check_orders
from .verdict import Verdict
from .workload import Recorder

LEASE_MARGIN = 0.05
"""Seconds taken off the end of each certainly-held lease: the nodes and the clients share one
machine's monotonic clock, so this covers only the time between a reading and its use."""


def judge(
    history: Recorder, final: dict[str, Any], cluster: FaultCluster, *, leader_url: str
) -> list[Verdict]:
    """The verdicts of every checker; the run passed when each is ``ok``."""
    outbox = requests.get(f"{leader_url}/outbox", timeout=10)
    outbox.raise_for_status()
    accepted = [entry["fencing_token"] for entry in outbox.json()["processed"]]
    return [
        check_orders(history.ops),
        lost_writes(history.ops, final),
        fencing(history.grants),
        leases(history.grants, margin=LEASE_MARGIN),
        singleton(cluster.task_starts(), accepted),
    ]
