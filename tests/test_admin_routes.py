"""The admin routes of the peer blueprint over real HTTP: ``/_catga/admin/members`` (GET,
POST, DELETE) and ``/_catga/admin/transfer-leader``. Signed with the cluster secret like the
Raft RPC (unsigned: 401); bad bodies get JSON 400/415 and change nothing; any node answers and
forwards to the leader."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from helpers import LocalCluster, free_ports, poll

from catga_sync.config import ClusterConfig
from catga_sync.node import ClusterNode
from catga_sync.transport.admin import AdminClient

SECRET = "admin-routes-test-secret-0123456789"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # Unchecked: the Ready-contract checker knows only the cluster's own nodes, and would
    # blame the inline replies of the joiner these tests add (test_members_node checks it).
    with LocalCluster(
        3, transport="http", secret=SECRET, committed_leader=True, checked=False
    ) as cluster:
        yield cluster


def _admin() -> AdminClient:
    return AdminClient(secret=SECRET)


def _joiner(cluster: LocalCluster) -> ClusterNode:
    config = ClusterConfig(
        local_node_endpoint=f"http://127.0.0.1:{free_ports(1)[0]}",
        members=tuple(cluster.endpoints),
        node_id="joiner",
        election_timeout=timedelta(seconds=0.15),
        heartbeat_interval=timedelta(seconds=0.05),
        secret=SECRET,
        join=True,
    )
    return ClusterNode(config).start()


def test_get_members_from_a_follower_is_the_leaders_answer(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.follower()
    status, answer = _admin().request(follower.raft_id, "GET", "members", timeout=5)
    assert status == 200, answer
    assert sorted(answer["voters"]) == sorted(cluster.endpoints)
    assert answer["leader"] == leader.raft_id
    assert answer["node"]["endpoint"] == leader.raft_id, "forwarded to the leader"
    assert answer["replication"]["last_index"] >= 1
    status, local = _admin().request(follower.raft_id, "GET", "members", timeout=5, local=True)
    assert status == 200 and local["node"]["endpoint"] == follower.raft_id
    assert local["node"]["role"] == "follower" and "replication" not in local


def test_unsigned_requests_are_refused_with_401(cluster: LocalCluster) -> None:
    url = cluster.endpoints[0] + "/_catga/admin/members"
    headers = {"X-Catga-Sender": "someone"}
    for method, body in (("GET", None), ("POST", {"endpoint": "http://x:1"}), ("DELETE", {})):
        response = requests.request(method, url, json=body, headers=headers, timeout=5)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"
    wrong = AdminClient(secret="not-the-cluster-secret-0123456789")
    status, answer = wrong.request(cluster.endpoints[0], "POST", "transfer", {}, timeout=5)
    assert status == 401 and "bad signature" in answer["message"]


@pytest.mark.parametrize(
    ("method", "route", "body", "message"),
    [
        ("POST", "members", {}, '"endpoint" is required'),
        ("POST", "members", {"endpoint": "not a url"}, "is not an endpoint"),
        ("POST", "members", {"endpoint": "http://x:1", "voter": "yes"}, '"voter" must be'),
        ("POST", "members", {"endpoint": "http://x:1", "extra": 1}, "Unknown key"),
        ("POST", "members", {"endpoint": "http://x:1", "timeout": -1}, '"timeout" must be'),
        ("DELETE", "members", {"endpoint": 5}, '"endpoint" is required'),
        ("POST", "transfer", {"to": "nope"}, "is not an endpoint"),
    ],
)
def test_bad_bodies_get_400_and_change_nothing(
    cluster: LocalCluster, method: str, route: str, body: dict[str, object], message: str
) -> None:
    leader = cluster.leader()
    before = leader.members
    status, answer = _admin().request(leader.raft_id, method, route, body, timeout=5)
    assert status == 400, answer
    assert answer["error"] == "bad_request" and message in answer["message"]
    assert leader.members == before and cluster.leader() is leader


def test_not_json_gets_400_or_415(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    admin = _admin()
    for raw, content_type, code in (
        (b"[1, 2]", "application/json", 400),
        (b"{not json", "application/json", 400),
        (b'{"endpoint": "http://x:1"}', "text/plain", 415),
    ):
        path = "/_catga/admin/members"
        from catga_sync.transport.signing import signed_headers

        headers = {"Content-Type": content_type, "X-Catga-Sender": "test"}
        headers.update(signed_headers(SECRET, "POST", path, raw, "test", __import__("time").time()))
        response = requests.post(leader.raft_id + path, data=raw, headers=headers, timeout=5)
        assert response.status_code == code, response.text
    assert admin.request(leader.raft_id, "PUT", "members", {}, timeout=5)[0] == 405


def test_add_through_a_follower_then_transfer_then_remove(cluster: LocalCluster) -> None:
    cluster.leader()
    follower = cluster.follower()
    joiner = _joiner(cluster)
    admin = _admin()
    try:
        body = {"endpoint": joiner.raft_id, "voter": True}
        status, answer = admin.request(follower.raft_id, "POST", "members", body, timeout=30)
        assert status == 200, answer
        assert joiner.raft_id in answer["voters"] and len(answer["voters"]) == 4
        joiner.wait_for(lambda s: s.membership == "voter", 5)

        status, again = admin.request(follower.raft_id, "POST", "members", body, timeout=30)
        assert status == 200 and again["voters"] == answer["voters"], "a retry is harmless"

        status, moved = admin.request(
            follower.raft_id, "POST", "transfer", {"to": joiner.raft_id}, timeout=10
        )
        assert status == 200, moved
        assert moved["leader"] == joiner.raft_id
        joiner.wait_for(lambda s: s.is_leader, 5)

        # Removing the leader (the joiner): it hands over first. Asked through the node it
        # most likely hands over to (all caught up: the first endpoint), which forwarded the
        # call, then becomes the leader that must finish it itself.
        via = min(cluster.endpoints)
        status, removed = admin.request(
            via, "DELETE", "members", {"endpoint": joiner.raft_id}, timeout=20
        )
        assert status == 200, removed
        assert sorted(removed["voters"]) == sorted(cluster.endpoints)
        joiner.wait_for(lambda s: s.membership == "removed", 5)
        poll(lambda: cluster.leader(unique=False) is not None, 5, "a leader among the three")
    finally:
        joiner.stop(transfer=False)


def test_an_unknown_member_is_a_409_naming_the_members(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    status, answer = _admin().request(
        leader.raft_id, "DELETE", "members", {"endpoint": "http://127.0.0.1:1"}, timeout=5
    )
    assert status == 409 and answer["error"] == "membership_change"
    assert "is not a member" in answer["message"]
