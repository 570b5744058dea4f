"""Replicated state machines on three real nodes talking HTTP on loopback: commands from the
leader and from followers, errors across the hop, linearizable and local reads, request ids,
snapshots."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import LocalCluster

from catga_sync.errors import CatgaError, InvalidRequestIdError, NoLeaderError
from catga_sync.fsm import StateMachine, UnknownCommandError, command, query
from catga_sync.kv import ReplicatedDict
from catga_sync.node import ClusterNode
from catga_sync.state import parse_request_id

WAIT = 10.0


class OrderNotFound(KeyError):
    """Raised by the Orders machine (a user-defined error type crossing the hop)."""


class Orders(StateMachine):
    name = "orders"

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.next_id = 1

    @command
    def create(self, customer: str, amount: float) -> dict[str, Any]:
        if amount <= 0:
            raise ValueError(f"amount must be positive, not {amount}")
        order = {"id": str(self.next_id), "customer": customer, "amount": amount, "version": 1}
        self.orders[order["id"]] = order
        self.next_id += 1
        return order

    @command
    def cancel(self, order_id: str) -> dict[str, Any]:
        if order_id not in self.orders:
            raise OrderNotFound(order_id)
        self.orders[order_id]["status"] = "cancelled"
        return self.orders[order_id]

    @query
    def get(self, order_id: str) -> dict[str, Any] | None:
        return self.orders.get(order_id)

    @query
    def count(self) -> int:
        return len(self.orders)


def _with_machines(node: ClusterNode) -> None:
    node.register(Orders())
    node.register(ReplicatedDict())


class Cluster(LocalCluster):
    """Three nodes over HTTP with the Orders machine and the key-value map. Its :meth:`leader`
    is the node that itself says it leads and has committed its term's no-op."""

    def __init__(self, snapshot_every: int = 10_000) -> None:
        super().__init__(
            3,
            transport="http",
            config={"snapshot_every": snapshot_every},
            setup=_with_machines,
            committed_leader=True,
            wait=WAIT,
            # Nothing here is about elections: a timeout that two busy test workers on two
            # cores do not trip keeps the leader, so that a linearizable query (which fails at
            # once while no leader is known) does not meet an election (CI: 1 in ~2,000).
            election_timeout=0.5,
            heartbeat_interval=0.1,
        )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_a_command_on_the_leader_is_applied_everywhere(cluster: Cluster) -> None:
    orders = cluster.leader().state(Orders)
    order = orders.create("ada", 12.5)
    assert order == {"id": "1", "customer": "ada", "amount": 12.5, "version": 1}
    for node in cluster.nodes:
        assert node.state(Orders).get("1") == order  # linearizable on every node


def test_a_command_on_a_follower_is_forwarded_and_applied_here_before_returning(
    cluster: Cluster,
) -> None:
    follower = cluster.follower()
    order = follower.state(Orders).create("bob", 3)
    # Applied on this follower already: a local (stale) read sees it at once.
    assert follower.state(Orders).local.get(order["id"]) == order


def test_an_error_in_apply_reaches_the_caller_with_its_type_and_message(
    cluster: Cluster,
) -> None:
    for node in (cluster.leader(), cluster.follower()):
        with pytest.raises(ValueError, match="amount must be positive, not -1"):
            node.state(Orders).create("eve", -1)
        with pytest.raises(OrderNotFound):
            node.state(Orders).cancel("404")
    # Nothing was created, identically on every node.
    for node in cluster.nodes:
        assert node.state(Orders).count() == 0


def test_non_json_arguments_are_refused_before_anything_is_proposed(cluster: Cluster) -> None:
    leader = cluster.leader()
    before = leader.status.commit_index
    with pytest.raises(TypeError, match="must be JSON"):
        leader.state(Orders).create("x", object())
    with pytest.raises(TypeError, match="must be JSON"):
        leader.state(Orders).create("x", float("nan"))
    assert leader.status.commit_index == before


def test_unknown_methods_say_what_exists(cluster: Cluster) -> None:
    with pytest.raises(AttributeError, match="commands: \\['cancel', 'create'\\]"):
        cluster.leader().state(Orders).delete("1")  # type: ignore[attr-defined]


def test_unregistered_state_machines_are_refused(cluster: Cluster) -> None:
    class Other(StateMachine):
        name = "other"

    with pytest.raises(CatgaError, match="not registered"):
        cluster.leader().state(Other)
    with pytest.raises(CatgaError, match="before starting"):
        cluster.leader().register(Other())


def test_a_repeated_request_id_is_applied_once(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    first = follower.state(Orders).with_request_id("order-key-1").create("cy", 7)
    again = leader.state(Orders).with_request_id("order-key-1").create("cy", 7)
    assert again == first
    assert leader.state(Orders).count() == 1


@pytest.mark.parametrize("bad", ["", "k" * 201, 7], ids=["empty", "too long", "not text"])
def test_a_bad_request_id_is_an_invalid_request_id_error(bad: Any) -> None:
    with pytest.raises(InvalidRequestIdError, match="a request id must be a non-empty") as caught:
        parse_request_id(bad)
    assert isinstance(caught.value, CatgaError)
    assert isinstance(caught.value, ValueError)


def test_concurrent_commands_from_every_node_all_apply_once(cluster: Cluster) -> None:
    cluster.leader()
    errors: list[BaseException] = []

    def work(node: ClusterNode, k: int) -> None:
        try:
            for n in range(10):
                node.state(ReplicatedDict).increment("hits")
                node.state(ReplicatedDict).set(f"{node.node_id}-{k}-{n}", n)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(node, k)) for node in cluster.nodes for k in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    kv = cluster.nodes[2].state(ReplicatedDict)
    assert kv.get("hits") == 60
    assert kv.size() == 61


def test_reads_never_go_back_in_time_for_a_client_hopping_between_nodes(
    cluster: Cluster,
) -> None:
    cluster.leader()
    for n in range(15):
        writer = cluster.nodes[n % 3]
        writer.state(ReplicatedDict).set("seen", n)
        for reader in cluster.nodes:
            assert read_as_a_client(reader, "seen") == n


def read_as_a_client(node: ClusterNode, key: str) -> Any:
    """A linearizable read, asked again while no leader is known: a read refuses at once then
    (NoLeaderError, the example app's 503 no_leader), and an election can happen mid-test on a
    loaded machine. A stale answer is never retried away: only the refusal is."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return node.state(ReplicatedDict).get(key)
        except NoLeaderError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_unknown_command_entries_fail_cleanly(cluster: Cluster) -> None:
    from catga_sync.fsm import encode_command

    leader = cluster.leader()
    data = encode_command("orders", "nope", [], {}, client=None, seq=None, ack=None, time=0.0)
    with pytest.raises(UnknownCommandError):
        leader.submit(data).unwrap()


def test_snapshots_compact_the_log_and_a_restarted_node_recovers_from_one() -> None:
    c = Cluster(snapshot_every=20)
    c.start()
    try:
        leader = c.leader()
        kv = leader.state(ReplicatedDict)
        for n in range(70):
            kv.set(f"k{n}", n)
        assert leader.stats.snapshots >= 3
        follower = c.follower()
        k = c.nodes.index(follower)
        restarted = c.restart(k)
        # The leader's published status can lag its apply by a moment; its read index cannot.
        committed = leader.read_barrier(timeout=WAIT)
        restarted.wait_for(lambda s: s.last_applied >= committed, WAIT)
        assert restarted.state(ReplicatedDict).local.get("k69") == 69
        assert restarted.state(ReplicatedDict).local.size() == 70
    finally:
        c.stop()
