"""One HTTP exchange per Raft round trip, and no fsync for a commit index alone.

A peer request that asks for an inline reply (``X-Catga-Reply: inline``) is answered with the
messages for its sender once they are persisted; the reply is signed and bound to its request
when the cluster has a secret. A Ready whose only durable change is the commit index is written
without an fsync: it survives a crash of the process, and may be lost with a power loss.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from _peer_support import (
    AnsweringReceiver,
    RecordingReceiver,
    heartbeat,
    heartbeat_response,
    peer_app,
    serve,
)
from helpers import LocalCluster

from catga_sync.errors import PeerAuthError
from catga_sync.kv import ReplicatedDict
from catga_sync.storage import MemoryStorage
from catga_sync.transport.http import HttpTransport
from catga_sync.transport.signing import reply_headers, verify_reply

SECRET = "inline reply secret"
ME = "http://127.0.0.1:5000"
WAIT = 10.0


@pytest.mark.parametrize("secret", [None, SECRET])
def test_a_heartbeat_is_answered_in_the_response_of_its_request(secret: str | None) -> None:
    peer = AnsweringReceiver("placeholder")
    with serve(peer_app(lambda: peer, secret=secret)) as server:
        peer_id = f"http://127.0.0.1:{server.port}"
        peer._raft_id = peer_id
        ours = RecordingReceiver(ME)
        transport = HttpTransport(
            sender_id=ME,
            sender_name="me",
            peers=[peer_id],
            secret=secret,
            url_prefix="/_catga",
            timeout=2.0,
            reply_receiver=ours,
        )
        try:
            transport.send([heartbeat(ME, peer_id, term=3, context="ctx")])
            assert ours.wait_for(1), transport.stats()
        finally:
            transport.close()
    assert peer.messages == [heartbeat(ME, peer_id, term=3, context="ctx")]
    assert ours.messages == [heartbeat_response(peer_id, ME, 3, "ctx")]


def test_a_reply_is_bound_to_the_request_it_answers() -> None:
    body = b'{"messages":[]}'
    headers = reply_headers(SECRET, "/_catga/raft", "a" * 64, body, "http://peer", time.time())
    verify_reply(SECRET, "/_catga/raft", "a" * 64, body, headers, time.time(), 30)
    with pytest.raises(PeerAuthError, match="bad signature"):
        verify_reply(SECRET, "/_catga/raft", "b" * 64, body, headers, time.time(), 30)
    with pytest.raises(PeerAuthError, match="bad signature"):
        verify_reply(SECRET, "/_catga/raft", "a" * 64, body + b" ", headers, time.time(), 30)
    assert reply_headers(None, "/_catga/raft", "a" * 64, body, "http://peer", time.time()) == {}


def _disk_image(storage: MemoryStorage) -> MemoryStorage:
    """A copy of what ``storage`` holds now, as a crash would leave it (white-box: the fields
    of the in-memory storage are its "disk")."""
    image = MemoryStorage(storage.node_id)
    with storage._mutex:
        image._hard = storage._hard
        image._entries = list(storage._entries)
        image._snapshot = storage._snapshot
        image._bounds = storage._bounds
    return image


def _cluster() -> LocalCluster:
    """Three nodes over HTTP with a secret, state in memory, a key-value map registered."""
    return LocalCluster(
        3,
        transport="http",
        secret=SECRET,
        setup=lambda node: node.register(ReplicatedDict()),
        committed_leader=True,
        wait=WAIT,
    )


def test_followers_answer_inline_and_write_commit_only_unsynced_yet_recover_on_restart() -> None:
    cluster = _cluster().start()
    nodes = cluster.nodes
    try:
        leader = cluster.leader(unique=False)
        kv = leader.state(ReplicatedDict)
        for k in range(30):
            kv.set(f"k{k}", k)
        followers = [n for n in nodes if n is not leader]
        last_set = leader.read_barrier(timeout=WAIT)
        for node in followers:
            node.wait_for(lambda s: s.last_applied >= last_set, WAIT)
            assert node.stats.inline_replies > 0  # answers rode on the leader's requests
            assert node.stats.commit_only_writes_unsynced > 0  # commit notices cost no fsync
        # What a follower killed now (kill -9, no clean stop) finds on disk: the commit index
        # it had, although no commit-only batch was fsynced. Taken on its loop, between two
        # batches, where the published status and the storage agree.
        k = nodes.index(followers[0])
        storage = cluster.storages[k]
        assert isinstance(storage, MemoryStorage)
        image, status = followers[0].run_on_loop(
            lambda: (_disk_image(storage), followers[0].status)
        )
        assert status.commit_index >= last_set
        assert image._hard.commit == status.commit_index
        # What a power loss may leave (Raft allows it): no commit index ever written. The
        # node comes back with every entry and learns the commit from the leader.
        image._hard = dataclasses.replace(image._hard, commit=0)
        restarted = cluster.restart(k, storage=image)
        kv.set("after", "restart")
        # The leader's published status can lag its apply by a moment; its read index cannot.
        committed = leader.read_barrier(timeout=WAIT)
        restarted.wait_for(lambda s: s.last_applied >= committed, WAIT)
        assert restarted.state(ReplicatedDict).local.get("k29") == 29
        assert restarted.state(ReplicatedDict).local.get("after") == "restart"
    finally:
        cluster.stop()
