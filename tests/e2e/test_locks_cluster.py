"""End to end: the example's lock endpoints on three real processes. A held lock keeps its
token through a leader killed with -9; a lock whose holder vanished frees after its TTL plus a
failover; a leader paused past the TTL (SIGSTOP) never lets two holders overlap — the new
leader restarts the lease clock — and a fenced resource refuses the old holder's late write."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from catga_sync.errors import StaleTokenError
from catga_sync.fencing import FencedResource

from .harness import (
    ExampleCluster,
    NodeProcess,
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


def acquire(node: NodeProcess, name: str, **body: Any) -> tuple[int, Any]:
    response = requests.post(f"{node.url}/locks/{name}", json=body, timeout=TIMEOUT)
    return response.status_code, response.json()


def acquire_retrying(node: NodeProcess, name: str, **body: Any) -> Any:
    """Acquire, retrying the 503s of a failover (no leader for a moment)."""
    deadline = time.monotonic() + 30
    while True:
        code, answer = acquire(node, name, **body)
        if code == 200:
            return answer
        assert code == 503, (code, answer)
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def holder(node: NodeProcess, name: str) -> Any:
    code, body = get_json(f"{node.url}/locks/{name}", timeout=TIMEOUT)
    return body if code == 200 else None


def test_a_held_lock_keeps_its_token_through_a_leader_kill(cluster: ExampleCluster) -> None:
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    grant = acquire_retrying(follower, "billing", ttl=30, owner="worker-a")
    leader.kill()
    survivors = [n for n in cluster.nodes if n is not leader]
    poll(lambda: leader_among(survivors), 10, "a new leader")
    for node in survivors:
        held = poll(lambda node=node: holder(node, "billing"), 10, "the lock on the new leader")
        assert (held["token"], held["owner"]) == (grant["token"], "worker-a")
    code, answer = acquire(survivors[0], "billing", ttl=5, wait=0.3, owner="worker-b")
    assert code == 409 and answer["error"] == "lock_not_acquired"
    released = requests.delete(
        f"{survivors[1].url}/locks/billing", json={"token": grant["token"]}, timeout=TIMEOUT
    )
    assert released.status_code == 200
    assert acquire_retrying(survivors[0], "billing", ttl=5)["token"] > grant["token"]


def test_a_vanished_holders_lock_frees_after_its_ttl_and_a_failover(
    cluster: ExampleCluster,
) -> None:
    ttl = 1.0
    leader = cluster.wait_for_leader()
    grant = acquire_retrying(leader, "nightly", ttl=ttl, owner="gone")  # never released
    leader.kill()
    killed_at = time.monotonic()
    survivors = [n for n in cluster.nodes if n is not leader]
    poll(lambda: leader_among(survivors), 10, "a new leader")
    nxt = acquire_retrying(survivors[1], "nightly", ttl=5, wait=10, owner="next")
    freed_after = time.monotonic() - killed_at
    assert nxt["token"] > grant["token"]
    # The new leader restarts the lease at its election (never shortening it), which comes
    # after the kill: freed no sooner than one TTL after it, and well within TTL + a few
    # election timeouts.
    assert ttl <= freed_after < ttl + 3.0, freed_after


def test_a_leader_paused_past_the_ttl_never_lets_two_holders_overlap(
    cluster: ExampleCluster,
) -> None:
    ttl = 1.0
    resource = FencedResource()
    leader = cluster.wait_for_leader()
    others = [n for n in cluster.nodes if n is not leader]
    first = acquire_retrying(others[0], "ledger", ttl=ttl, owner="first")
    granted_at = time.monotonic()
    resource.write("balance", 100, first["token"])

    leader.signal(signal.SIGSTOP)  # the lease clock's owner stops, for longer than the TTL
    try:
        poll(lambda: leader_among(others), 10, "a new leader")
        second = acquire_retrying(others[1], "ledger", ttl=5, wait=10, owner="second")
        # Never before the first holder's lease ran out: the new leader restarted its clock.
        assert time.monotonic() - granted_at >= ttl * 0.99
        assert second["token"] > first["token"]
        resource.write("balance", 200, second["token"])
    finally:
        leader.signal(signal.SIGCONT)

    # The first holder, unaware its lease is gone, writes late: the fence refuses it.
    with pytest.raises(StaleTokenError):
        resource.write("balance", 150, first["token"])
    assert resource.read("balance") == 200
    assert resource.accepted == [first["token"], second["token"]]
    # Its release is refused too: its token no longer holds the lock.
    late = requests.delete(
        f"{others[0].url}/locks/ledger", json={"token": first["token"]}, timeout=TIMEOUT
    )
    assert late.status_code == 409
    poll(lambda: leader_among(cluster.nodes), 10, "one leader after the resume")
    for node in cluster.nodes:
        held = poll(lambda node=node: holder(node, "ledger"), 10, "the lock everywhere")
        assert held["token"] == second["token"]
