"""End to end: the example OrderSystem on three real processes with SQLite state. Writes on any
node, linearizable reads on every node, exactly-once under retries and under a leader killed
with -9, and version conflicts decided once, by the log."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from .harness import ExampleCluster, NodeProcess, poll

pytestmark = pytest.mark.e2e

TIMEOUT = 15.0
"""Per HTTP request: longer than a node's own commit timeout, so the node answers first."""
RETRY_FOR = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ExampleCluster]:
    c = ExampleCluster(tmp_path)
    c.start()
    try:
        poll(lambda: len(c.statuses()) == 3, 60, "all three nodes serving")
        leader = c.wait_for_leader()
        for node in c:
            poll(
                lambda node=node: node.status()["leader_endpoint"] == leader.endpoint,
                10,
                f"{node.name} knows the leader",
            )
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


def call_once(
    method: str, node: NodeProcess, path: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    response = requests.request(
        method, f"{node.url}{path}", json=body, headers=headers, timeout=TIMEOUT
    )
    return response.status_code, response.json()


def call(
    method: str, node: NodeProcess, path: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    """Like a careful client: a 503 (an election under way on a busy machine) is retried on
    the same node, with the same Idempotency-Key, until RETRY_FOR has passed."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        code, answer = call_once(method, node, path, body, key)
        if code != 503 or time.monotonic() > deadline:
            return code, answer
        assert method == "GET" or key is not None, f"unsafe to retry {method} without a key"
        time.sleep(0.05)


def followers(cluster: ExampleCluster) -> list[NodeProcess]:
    leader = cluster.wait_for_leader()
    return [n for n in cluster if n is not leader]


def create_order(node: NodeProcess, customer: str = "ada", amount: float = 10) -> dict[str, Any]:
    body = {"customer": customer, "amount": amount}
    code, order = call("POST", node, "/orders", body, uuid.uuid4().hex)
    assert code == 201, order
    return dict(order)


def test_an_order_posted_on_a_follower_is_readable_on_every_node_at_once(
    cluster: ExampleCluster,
) -> None:
    follower = followers(cluster)[0]
    order = create_order(follower, "ada", 12.5)
    assert order == {
        "id": order["id"],
        "customer": "ada",
        "amount": 12.5,
        "status": "created",
        "version": 1,
    }
    # No polling: reads are linearizable, so the 201 means every node's GET sees it.
    for node in cluster:
        assert call("GET", node, f"/orders/{order['id']}") == (200, order)
        assert call("GET", node, "/orders") == (200, {"orders": [order]})


def test_a_client_hopping_between_nodes_never_reads_an_older_version(
    cluster: ExampleCluster,
) -> None:
    nodes = cluster.nodes
    order = create_order(nodes[0])
    path = f"/orders/{order['id']}"
    stop = threading.Event()
    hopper_reads: list[int] = []
    hopper_errors: list[str] = []

    def hopper() -> None:
        # Another client: reads only, round-robin over the nodes, while the writes go on.
        k = 0
        while not stop.is_set():
            code, body = call("GET", nodes[k % 3], path)
            if code != 200:
                hopper_errors.append(f"{nodes[k % 3].name}: {code} {body}")
                return
            hopper_reads.append(body["version"])
            k += 1

    reader = threading.Thread(target=hopper, daemon=True)
    reader.start()
    try:
        version = 1
        for k in range(30):
            writer = nodes[k % 3]
            body = {"status": f"step-{k}", "expected_version": version}
            code, updated = call("PATCH", writer, path, body, f"step-{k}")
            assert code == 200, updated
            assert updated["version"] == version + 1
            version = updated["version"]
            # Write via one node, read via the others: never older than the write.
            for other in nodes:
                if other is not writer:
                    code, seen = call("GET", other, path)
                    assert code == 200, seen
                    assert seen["version"] == version, (other.name, seen, version)
                    assert seen["status"] == f"step-{k}"
    finally:
        stop.set()
        reader.join(TIMEOUT)
    assert not hopper_errors, hopper_errors
    assert hopper_reads, "the hopping reader read nothing"
    assert hopper_reads == sorted(hopper_reads), "a read went back in time"


def test_one_idempotency_key_sent_to_every_node_creates_one_order(
    cluster: ExampleCluster,
) -> None:
    nodes = cluster.nodes
    body = {"customer": "ada", "amount": 3}
    # At the same time on all three nodes, then again one after another.
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda n: call("POST", n, "/orders", body, "same-key"), nodes))
    answers += [call("POST", n, "/orders", body, "same-key") for n in nodes]
    codes = {code for code, _ in answers}
    orders = {order["id"]: order for _, order in answers}
    assert codes == {201}, answers
    assert len(orders) == 1, answers
    for node in nodes:
        assert call("GET", node, "/orders") == (200, {"orders": list(orders.values())})


def test_proposals_on_followers_while_the_leader_is_killed_apply_exactly_once(
    cluster: ExampleCluster,
) -> None:
    leader = cluster.wait_for_leader()
    targets = followers(cluster)
    keys: list[str] = []
    created: dict[str, dict[str, Any]] = {}
    retries: list[str] = []
    failures: list[str] = []
    started, killed = threading.Event(), threading.Event()

    def post_until_created(key: str, first: int) -> dict[str, Any] | None:
        deadline = time.monotonic() + 60
        attempt = 0
        while True:
            node = targets[(first + attempt) % 2]
            try:
                code, body = call_once("POST", node, "/orders", {"customer": key, "amount": 1}, key)
            except requests.RequestException as exc:  # not expected: followers stay up
                code, body = 0, repr(exc)
            if code == 201:
                return dict(body)
            if code != 503 or time.monotonic() > deadline:
                failures.append(f"{key} on {node.name}: {code} {body}")
                return None
            # Same key, maybe another node: at most once, whatever became of the first try.
            retries.append(f"{key} on {node.name}: {body.get('error')}")
            attempt += 1

    def client() -> None:
        # Every key goes to both followers at once (a client retrying on another node before
        # the first answer came back), before, during and after the kill: 20 more keys once
        # the leader is dead.
        after_kill = 0
        with ThreadPoolExecutor(2) as pool:
            for k in range(1000):
                key = f"order-{k}"
                keys.append(key)
                answers = list(pool.map(post_until_created, [key, key], [0, 1]))
                if answers[0] is None or answers[1] is None:
                    return
                if answers[0] != answers[1]:
                    failures.append(f"{key}: two answers {answers}")
                    return
                created[key] = answers[0]
                if k == 5:
                    started.set()
                if killed.is_set():
                    after_kill += 1
                    if after_kill >= 20:
                        return

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    assert started.wait(60), failures
    leader.kill()  # -9, mid-stream
    killed.set()
    thread.join(120)
    assert not thread.is_alive(), "the client did not finish"
    assert not failures, failures
    assert set(created) == set(keys)

    survivor = cluster.wait_for_leader(timeout=10)
    for node in cluster.running():
        code, listing = call("GET", node, "/orders")
        assert code == 200, listing
        orders = listing["orders"]
        # One order per key, no more, no less.
        assert len(orders) == len(keys), (node.name, len(orders), retries)
        assert sorted(o["customer"] for o in orders) == sorted(keys)
        assert {o["id"] for o in orders} == {o["id"] for o in created.values()}
    # Each key still answers with its own order, on any node, and creates nothing more.
    for key in keys:
        assert call("POST", survivor, "/orders", {"customer": key, "amount": 1}, key) == (
            201,
            created[key],
        )
    assert len(call("GET", survivor, "/orders")[1]["orders"]) == len(keys)
    print(f"{len(keys)} keys, {len(retries)} retries: {retries[:5]}")


def test_racing_patches_on_two_nodes_are_decided_once(cluster: ExampleCluster) -> None:
    a, b = followers(cluster)
    leader = cluster.wait_for_leader()
    for pair in [(a, b), (a, leader), (b, leader)]:
        order = create_order(pair[0])
        path = f"/orders/{order['id']}"
        gate = threading.Barrier(2)

        def patch(node: NodeProcess, path: str = path, gate: threading.Barrier = gate) -> Any:
            gate.wait(TIMEOUT)
            body = {"status": f"by-{node.name}", "expected_version": 1}
            return call("PATCH", node, path, body, f"{path}-{node.name}")

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(patch, pair))
        codes = sorted(code for code, _ in answers)
        assert codes == [200, 409], answers
        winner = next(body for code, body in answers if code == 200)
        loser = next(body for code, body in answers if code == 409)
        assert winner["version"] == 2
        assert loser["error"] == "version_conflict"
        assert loser["current_version"] == 2
        for node in cluster:
            assert call("GET", node, path) == (200, winner)


def test_ship_on_a_follower_runs_on_the_leader_and_errors_cross_the_hop(
    cluster: ExampleCluster,
) -> None:
    a, b = followers(cluster)
    order = create_order(a)
    path = f"/orders/{order['id']}"
    # The guide's flow: the follower's ForwardToLeaderBehavior sends ShipOrder to the leader.
    shipped = {**order, "status": "shipped", "version": 2}
    assert call("POST", a, f"{path}/ship", key="ship-a") == (200, shipped)
    for node in cluster:
        assert call("GET", node, path) == (200, shipped)
    # The same key from the other follower: the leader answers from its record.
    assert call("POST", b, f"{path}/ship", key="ship-a") == (200, shipped)

    # The handler's errors come back as themselves: their type picks the status.
    code, body = call("POST", b, "/orders/nope/ship", key="ship-nope")
    assert (code, body["error"]) == (404, "not_found"), body
    cancelled = create_order(b)
    body = {"status": "cancelled", "expected_version": 1}
    code, _ = call("PATCH", a, f"/orders/{cancelled['id']}", body, "cancel")
    assert code == 200
    code, body = call("POST", a, f"/orders/{cancelled['id']}/ship", key="ship-cancelled")
    assert (code, body["error"]) == (409, "cannot_ship"), body
    assert "only created or paid orders ship" in body["message"]
