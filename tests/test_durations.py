"""Every API that takes a timeout, TTL or wait takes a ``timedelta`` too, as the configuration
does (``DistributedLock.try_acquire(..., timeout=timedelta(seconds=5))`` raised)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from flask import Flask
from helpers import free_ports

from catga_sync.config import ClusterConfig
from catga_sync.config_values import seconds
from catga_sync.errors import NoLeaderError
from catga_sync.forwarding import ForwardToLeaderBehavior
from catga_sync.locks import DistributedLock
from catga_sync.mediator import Mediator
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage
from catga_sync.web.extension import CatgaCluster


def test_seconds_reads_a_timedelta_and_leaves_numbers_and_none_alone() -> None:
    assert seconds(timedelta(milliseconds=1500)) == 1.5
    assert seconds(2) == 2
    assert seconds(None) is None


@pytest.fixture
def solo() -> Iterator[tuple[Flask, CatgaCluster]]:
    (port,) = free_ports(1)
    app = Flask("durations")
    app.config.update(CATGA_CLUSTER_LOCAL_NODE_ENDPOINT=f"http://127.0.0.1:{port}")
    cluster = CatgaCluster(app)
    node = cluster.node_for(app)
    node.wait_for(lambda s: s.is_leader, timedelta(seconds=10))
    try:
        yield app, cluster
    finally:
        cluster.stop(app, timeout=timedelta(seconds=1))
    assert not node.running


def test_node_calls_take_timedeltas(solo: tuple[Flask, CatgaCluster]) -> None:
    app, cluster = solo
    node = cluster.node_for(app)
    node.propose(b"x", timeout=timedelta(seconds=5))
    node.read_barrier(timeout=timedelta(seconds=5))
    assert node.coordinator.wait_for_leader(timedelta(seconds=1)) == node.raft_id
    with pytest.raises(TimeoutError):
        node.wait_for(lambda s: False, timedelta(milliseconds=50))


def test_locks_and_decorators_take_timedeltas(solo: tuple[Flask, CatgaCluster]) -> None:
    app, cluster = solo
    node = cluster.node_for(app)
    lease = DistributedLock.try_acquire(node.coordinator, "r", timeout=timedelta(seconds=5))
    assert lease is not None
    lease.release()
    with cluster.lock("r", ttl=timedelta(seconds=5), timeout=timedelta(seconds=5), app=app) as held:
        assert held.ttl == 5.0

    @app.post("/relay")
    @cluster.forward_to_leader(timeout=timedelta(seconds=2))
    def relay() -> str:
        return "ran on the leader"

    assert app.test_client().post("/relay").get_data(as_text=True) == "ran on the leader"


def test_the_behavior_and_send_take_timedeltas() -> None:
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    config = ClusterConfig(
        local_node_endpoint=endpoint,
        members=(endpoint, "http://127.0.0.1:1", "http://127.0.0.1:2"),  # no quorum: no leader
        node_id="lonely",
    )
    mediator = Mediator()

    @mediator.command("noop")
    @dataclass
    class Noop:
        pass

    mediator.handler(Noop)(lambda cmd: "ran")
    node = ClusterNode(config, storage=MemoryStorage("lonely"), serve_http=False)
    behavior = ForwardToLeaderBehavior(node, timeout=timedelta(seconds=5))
    mediator.add_behavior(behavior, for_=Noop)
    with node:
        started = time.monotonic()
        with pytest.raises(NoLeaderError, match=r"within 0\.20s"):
            mediator.send(Noop(), timeout=timedelta(milliseconds=200))
        assert time.monotonic() - started < 3
