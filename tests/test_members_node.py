"""Membership changes at runtime, on real nodes: ``add_member``, ``remove_member``,
``move_leadership`` and join mode (``ClusterConfig(join=True)``).

A node started in join mode knows no membership and never campaigns; the leader adds it as a
learner, promotes it once its match index is close to the leader's last index, and it then
holds the data. Removing the leader hands leadership over first. One change at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import timedelta

import pytest
from helpers import LocalCluster, poll

from catga_sync import health
from catga_sync.config import ClusterConfig
from catga_sync.errors import MembershipChangeError, NotLeaderError
from catga_sync.kv import ReplicatedDict
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage
from catga_sync.transport.memory import MemoryTransport

JOINER = "http://localhost:7199"


def _kv(node: ClusterNode) -> None:
    node.register(ReplicatedDict())


def _joiner(cluster: LocalCluster, endpoint: str = JOINER) -> ClusterNode:
    """A fourth node in join mode on the cluster's memory network, started."""
    config = ClusterConfig(
        local_node_endpoint=endpoint,
        members=tuple(cluster.endpoints),
        node_id="joiner",
        election_timeout=timedelta(seconds=0.15),
        heartbeat_interval=timedelta(seconds=0.05),
        join=True,
    )
    assert cluster.network is not None
    node = ClusterNode(
        config,
        storage=MemoryStorage(config.node_id),
        transport=MemoryTransport(cluster.network, config.raft_id, config.node_id),
        serve_http=False,
    )
    _kv(node)
    cluster.network.register(node)
    return node.start()


def test_a_joining_node_waits_then_becomes_a_voter_with_the_data() -> None:
    with LocalCluster(3, setup=_kv, committed_leader=True) as cluster:
        leader = cluster.leader()
        for k in range(20):
            leader.state(ReplicatedDict).set(f"k{k}", k)
        joiner = _joiner(cluster)
        try:
            assert joiner.status.membership == "joining"
            body, code = health.health_response(joiner.status)
            assert code == 503 and "Join mode" in body["results"]["cluster"]["description"]
            assert joiner.stats.elections == 0 and joiner.status.term == 0

            members = leader.add_member(JOINER, timeout=10)

            assert JOINER in members.voters and not members.learners
            assert len(members.voters) == 4
            joiner.wait_for(lambda s: s.membership == "voter", 5)
            poll(lambda: joiner.state(ReplicatedDict).local.get("k19") == 19, 5, "the data")
            assert leader.members.voters == members.voters
            leader.state(ReplicatedDict).set("after", 1)  # commits with four voters
            poll(lambda: joiner.state(ReplicatedDict).local.get("after") == 1, 5, "new entries")
        finally:
            joiner.stop(transfer=False)


def test_add_as_learner_only() -> None:
    with LocalCluster(3, setup=_kv, committed_leader=True) as cluster:
        leader = cluster.leader()
        joiner = _joiner(cluster)
        try:
            members = leader.add_member(JOINER, voter=False, timeout=10)
            assert members.learners == (JOINER,) and JOINER not in members.voters
            joiner.wait_for(lambda s: s.membership == "learner", 5)
            assert leader.add_member(JOINER, voter=False, timeout=10) == members, "idempotent"
        finally:
            joiner.stop(transfer=False)


def test_removing_the_leader_moves_leadership_first_and_leaves_three_voters() -> None:
    with LocalCluster(3, setup=_kv, committed_leader=True) as cluster:
        leader = cluster.leader()
        joiner = _joiner(cluster)
        try:
            leader.add_member(JOINER, timeout=10)
            old_term = leader.status.term

            with pytest.raises(NotLeaderError):  # it hands over, then names the new leader
                leader.remove_member(leader.raft_id, timeout=5, forward=False)

            successor = poll(
                lambda: next((n for n in [*cluster.running(), joiner] if n.status.is_leader), None),
                5,
                "a new leader",
            )
            assert successor is not leader and successor.status.term > old_term
            members = successor.remove_member(leader.raft_id, timeout=5)
            assert len(members.voters) == 3 and leader.raft_id not in members.voters
            leader.wait_for(lambda s: s.membership == "removed", 5)
        finally:
            joiner.stop(transfer=False)


def test_a_second_concurrent_change_gets_a_typed_error() -> None:
    with LocalCluster(3, setup=_kv, committed_leader=True) as cluster:
        leader = cluster.leader()
        joiner = _joiner(cluster)
        assert cluster.network is not None
        # Hold the learner back (drop what the leader sends it), so the first add waits.
        rule = cluster.network.drop(lambda m: m.to == JOINER)
        errors: list[BaseException] = []

        def first() -> None:
            try:
                leader.add_member(JOINER, timeout=5)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=first)
        thread.start()
        try:
            poll(lambda: JOINER in leader.members.learners, 5, "the learner added")
            with pytest.raises(MembershipChangeError, match="another membership change"):
                leader.remove_member(cluster.follower().raft_id, timeout=2)
            cluster.network.allow(rule)
            thread.join(10)
            assert not errors, errors
            assert JOINER in leader.members.voters
        finally:
            with contextlib.suppress(ValueError):  # allowed already
                cluster.network.allow(rule)
            thread.join(10)
            joiner.stop(transfer=False)


def test_a_removed_follower_stops_campaigning_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with LocalCluster(3, setup=_kv, committed_leader=True) as cluster:
        leader = cluster.leader()
        removed = cluster.follower()
        caplog.set_level(logging.INFO, "catga_sync")

        members = leader.remove_member(removed.raft_id, timeout=5)

        assert removed.raft_id not in members.voters and len(members.voters) == 2
        removed.wait_for(lambda s: s.membership == "removed", 5)
        term, elections = removed.status.term, removed.stats.elections
        body, code = health.health_response(removed.status)
        assert code == 503 and "Removed" in body["results"]["cluster"]["description"]
        assert f"node {removed.node_id} was removed from the cluster" in caplog.text
        leader.state(ReplicatedDict).set("without it", 1)
        poll(lambda: removed.stats.ticks > 100, 10, "ten election timeouts")
        assert removed.status.term == term and removed.stats.elections == elections
        assert leader.status.is_leader and leader.status.term >= term, "no disruption"


def test_a_follower_refuses_a_change_without_forwarding() -> None:
    with LocalCluster(3, setup=_kv, committed_leader=True) as cluster:
        leader = cluster.leader()
        follower = cluster.follower()
        with pytest.raises(NotLeaderError) as caught:
            follower.add_member(JOINER, timeout=1, forward=False)
        assert caught.value.leader_endpoint == leader.raft_id
        with pytest.raises(MembershipChangeError, match="not a node endpoint"):
            leader.add_member("not a url", timeout=1)
        with pytest.raises(MembershipChangeError, match="is not a member"):
            leader.remove_member(JOINER, timeout=1)


def test_on_restart_the_replicated_membership_wins_and_a_differing_setting_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with LocalCluster(3, setup=_kv, committed_leader=True) as cluster:
        leader = cluster.leader()
        removed = cluster.follower()
        leader.remove_member(removed.raft_id, timeout=5)
        keeper = next(n for n in cluster.running() if n is not leader and n is not removed)
        keeper.wait_for(lambda s: removed.raft_id not in s.members, 5)
        caplog.set_level(logging.WARNING, "catga_sync")

        restarted = cluster.restart(keeper)

        assert removed.raft_id not in restarted.status.members
        assert "differs from the membership replicated in its log" in caplog.text
        assert ", ".join(sorted(cluster.endpoints)) in caplog.text


def test_join_is_a_setting_in_every_source() -> None:
    assert ClusterConfig.from_env(
        {"Cluster__LocalNodeEndpoint": JOINER, "Cluster__Join": "true"}
    ).join
    assert ClusterConfig.from_flask_config(
        {"CATGA_CLUSTER_LOCAL_NODE_ENDPOINT": JOINER, "CATGA_CLUSTER_JOIN": True}
    ).join
    assert not ClusterConfig(local_node_endpoint=JOINER).join
    config = ClusterConfig(
        local_node_endpoint=JOINER, members=("http://localhost:7100",), join=True
    )
    assert not config.raft_config().membership.voters


def test_an_idle_leader_lets_go_of_a_removed_peers_sender() -> None:
    """The sender to a removed node lives a few election timeouts (its farewell), then goes,
    even when the cluster writes nothing that would run a batch meanwhile."""
    with LocalCluster(3, transport="http", committed_leader=True) as cluster:
        leader = cluster.leader()
        removed = cluster.follower()
        leader.remove_member(removed.raft_id, timeout=5)
        transport = leader._transport  # the peers it sends to are not public
        poll(lambda: removed.raft_id not in transport.peers, 10, "the sender let go")
