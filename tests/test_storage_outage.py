"""A database that goes away under running nodes (restarted, unreachable) and comes back.

The node acknowledges nothing while it cannot write (the checking pair of every LocalCluster
verifies it), says so in its status and health, retries the same write, and goes on once the
database is back: a restart of the database server no longer stops every node. Any other
storage failure still stops the node (tests/storage/test_disk_full.py)."""

from __future__ import annotations

import pytest
from helpers import LocalCluster, poll

from catga_sync import ReplicatedDict
from catga_sync.errors import StorageUnavailableError
from catga_sync.health import health_response
from catga_sync.node import ClusterNode

WAIT = 10.0
GONE = StorageUnavailableError("the database is unreachable (a fault injected by the test)")


def with_kv(node: ClusterNode) -> None:
    node.register(ReplicatedDict())


@pytest.fixture
def cluster() -> LocalCluster:
    return LocalCluster(3, setup=with_kv)


def test_a_follower_whose_database_is_away_waits_says_so_and_catches_up(
    cluster: LocalCluster,
) -> None:
    with cluster:
        leader = cluster.leader()
        kv = leader.state(ReplicatedDict)
        kv.set("before", 1)
        follower = cluster.follower()
        disk = cluster.disks[cluster.index(follower)]
        assert disk is not None
        cluster.fail_persist(follower, GONE)
        for k in range(10):  # the other follower makes the majority
            kv.set(f"k{k}", k)
        poll(lambda: follower.status.storage_problem is not None, WAIT, "the outage shown")
        assert follower.running
        body, code = health_response(follower.status)
        assert code == 503
        assert body["results"]["cluster"]["description"].startswith("Storage unavailable")
        assert disk.failures >= 1
        disk.recover()
        index = leader.read_barrier(timeout=WAIT)
        follower.wait_for(lambda s: s.last_applied >= index and s.storage_problem is None, WAIT)
        assert follower.state(ReplicatedDict).local.get("k9") == 9
        assert health_response(follower.status)[1] == 200


def test_a_leader_whose_database_is_away_is_replaced_and_rejoins_losing_nothing(
    cluster: LocalCluster,
) -> None:
    with cluster:
        leader = cluster.leader()
        acknowledged = {}
        for k in range(5):
            leader.state(ReplicatedDict).set(f"a{k}", k)
            acknowledged[f"a{k}"] = k
        term = leader.status.term
        cluster.fail_persist(leader, GONE)
        leader.transfer_leadership()  # or it would wait out the followers' election timeout
        new = cluster.leader(above=term)
        assert new is not leader
        for k in range(5):
            new.state(ReplicatedDict).set(f"b{k}", k)
            acknowledged[f"b{k}"] = k
        assert leader.running  # waiting for its database, not failed
        cluster.disks[cluster.index(leader)].recover()  # type: ignore[union-attr]
        index = new.read_barrier(timeout=WAIT)
        leader.wait_for(lambda s: s.last_applied >= index and not s.is_leader, WAIT)
        for node in cluster.nodes:
            local = node.state(ReplicatedDict).local
            assert {key: local.get(key) for key in acknowledged} == acknowledged


def test_stopping_a_node_whose_database_is_away_does_not_hang(cluster: LocalCluster) -> None:
    with cluster:
        follower = cluster.follower()
        cluster.fail_persist(follower, GONE)
        cluster.leader().state(ReplicatedDict).set("x", 1)
        poll(lambda: follower.status.storage_problem is not None, WAIT, "the outage shown")
        follower.stop(transfer=False)
        assert not follower.running


@pytest.mark.parametrize("slow", ["follower", "leader"])
def test_a_slow_disk_costs_latency_not_safety_nor_leadership(
    cluster: LocalCluster, slow: str
) -> None:
    """Every persist of one node takes 40 ms longer (a quarter of the election timeout): its
    commands are slower, the leader stays the leader in the same term, every command commits
    everywhere, and the checking pair sees nothing acknowledged before it was durable."""
    with cluster:
        leader = cluster.leader()
        term = leader.status.term
        node = leader if slow == "leader" else cluster.follower()
        disk = cluster.disks[cluster.index(node)]
        assert disk is not None
        disk.slow(0.04)
        kv = leader.state(ReplicatedDict)
        for k in range(20):
            kv.set(f"k{k}", k)
        index = leader.read_barrier(timeout=WAIT)
        disk.slow(0)
        assert leader.status.is_leader and leader.status.term == term
        for each in cluster.nodes:
            each.wait_for(lambda s: s.last_applied >= index, WAIT)
            assert each.state(ReplicatedDict).local.get("k19") == 19
