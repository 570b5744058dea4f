"""End to end: leader-only work on three real processes of the example app. The
OutboxProcessor runs on exactly one node per term, moves to the new leader when the leader is
killed with -9, and a paused leader learns on resume that it is stale; the fenced outbox never
goes back to an older token."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .harness import (
    ExampleCluster,
    NodeProcess,
    cluster_status,
    get_json,
    leader_among,
    poll,
    running_cluster,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 15.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ExampleCluster]:
    with running_cluster(tmp_path) as c:
        yield c


def outbox_task(node: NodeProcess) -> dict[str, Any] | None:
    body = cluster_status(node)
    if body is None:
        return None
    (task,) = [t for t in body["singleton_tasks"] if t["name"] == "OutboxProcessor"]
    return {**task, "role": body["role"], "node_term": body["term"]}


def running_tasks(nodes: list[NodeProcess]) -> dict[str, dict[str, Any]]:
    tasks = {n.name: outbox_task(n) for n in nodes}
    return {name: t for name, t in tasks.items() if t is not None and t["state"] == "running"}


def create_order(node: NodeProcess) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            response = requests.post(
                f"{node.url}/orders", json={"customer": "ada", "amount": 1}, timeout=TIMEOUT
            )
            if response.status_code == 201:
                return str(response.json()["id"])
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "could not create an order"
        time.sleep(0.1)


def processed_token(node: NodeProcess, order_id: str) -> int | None:
    code, body = get_json(f"{node.url}/outbox", timeout=TIMEOUT)
    if code != 200:
        return None
    tokens = {p["order_id"]: p["fencing_token"] for p in body["processed"]}
    return tokens.get(order_id)


def test_the_outbox_runs_on_one_node_per_term_and_moves_when_the_leader_dies(
    cluster: ExampleCluster,
) -> None:
    nodes = cluster.nodes
    leader = cluster.wait_for_leader()
    term = leader.status()["term"]
    running = poll(lambda: running_tasks(nodes) or None, 10, "the OutboxProcessor to run")
    assert list(running) == [leader.name]
    assert running[leader.name]["fencing_token"] == term
    follower = next(n for n in nodes if n is not leader)
    first = create_order(follower)
    assert poll(lambda: processed_token(follower, first), 10, "the order processed") == term

    leader.kill()
    killed_at = time.monotonic()
    survivors = [n for n in nodes if n is not leader]
    new_leader: NodeProcess = poll(lambda: leader_among(survivors), 10, "a new leader")
    moved = poll(
        lambda: (t := running_tasks(survivors)) and list(t) == [new_leader.name] and t,
        10,
        "the OutboxProcessor on the new leader",
    )
    moved_after = time.monotonic() - killed_at
    new_term = moved[new_leader.name]["fencing_token"]
    assert new_term > term
    assert moved_after < 5.0  # a failover is ~0.3 s; benchmarks/singleton_failover.py measures
    second = create_order(survivors[0])
    assert poll(lambda: processed_token(survivors[0], second), 10, "processed") == new_term
    assert processed_token(survivors[0], first) == term  # never processed twice
    code, outbox = get_json(f"{new_leader.url}/outbox", timeout=TIMEOUT)
    assert code == 200 and outbox["fence"] == new_term and outbox["pending"] == []


def test_a_paused_leader_learns_on_resume_that_it_is_stale(cluster: ExampleCluster) -> None:
    nodes = cluster.nodes
    leader = cluster.wait_for_leader()
    term = leader.status()["term"]
    poll(lambda: list(running_tasks(nodes)) == [leader.name], 10, "the outbox on the leader")
    others = [n for n in nodes if n is not leader]

    leader.signal(signal.SIGSTOP)
    try:
        new_leader: NodeProcess = poll(lambda: leader_among(others), 10, "a new leader")
        poll(
            lambda: list(running_tasks(others)) == [new_leader.name],
            10,
            "the outbox on the new leader",
        )
        order = create_order(others[0])
        new_term = poll(lambda: processed_token(others[0], order), 10, "processed")
        assert new_term > term
    finally:
        leader.signal(signal.SIGCONT)

    # On resume the old leader hears the higher term, steps down and stops its run at once.
    def stale_and_stopped() -> bool:
        task = outbox_task(leader)
        return task is not None and task["role"] == "follower" and task["state"] != "running"

    poll(stale_and_stopped, 10, "the resumed old leader to stop its OutboxProcessor")
    assert list(running_tasks(nodes)) == [new_leader.name]
    code, outbox = get_json(f"{new_leader.url}/outbox", timeout=TIMEOUT)
    assert code == 200 and outbox["fence"] >= new_term
    assert all(p["fencing_token"] <= outbox["fence"] for p in outbox["processed"])
