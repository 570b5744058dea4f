"""End to end: a ClusterClient in this plain process (no node, no Flask app) against three
real processes of the example, with a client token, through a SIGKILL of the leader: a held
lock keeps its token and stays valid (renewed through the new leader), a command retried
through the failover is applied exactly once, and the leadership watch reports the change."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from catga_sync.client import ClientStatus, ClusterClient
from catga_sync.errors import ClientAuthError
from catga_sync.fsm import encode_command
from example_flask.orders import Orders

from .harness import ExampleCluster, leader_among, poll, started

pytestmark = pytest.mark.e2e

TOKEN = "e2e-client-token-0123456789abcdef"
TIMEOUT = 15.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ExampleCluster]:
    with started(ExampleCluster(tmp_path, extra_args=["--client-token", TOKEN])) as c:
        poll(lambda: len(c.statuses()) == 3, 60, "all 3 nodes serving")
        c.wait_for_leader()
        yield c


def test_a_plain_process_keeps_its_lock_and_applies_a_command_once_through_a_leader_kill(
    cluster: ExampleCluster,
) -> None:
    with ClusterClient([n.endpoint for n in cluster], secret=TOKEN, timeout=TIMEOUT) as client:
        first = cluster.wait_for_leader()
        seen: list[ClientStatus] = []
        changed = threading.Event()

        def on_change(status: ClientStatus) -> None:
            seen.append(status)
            changed.set()

        watch = client.watch_leadership(on_change)
        poll(lambda: seen, TIMEOUT, "the watch's first status")
        assert seen[0].leader == first.endpoint

        lease = client.acquire("nightly-report", ttl=3, owner="cron@e2e")
        orders = client.state(Orders)
        before = orders.create("grace", 5)
        retried = encode_command(
            "orders", "create", ["ada", 10], {}, client="e2e-retry", seq=1, ack=1, time=0.0
        )
        sent_once = client.submit(retried).unwrap()  # applied, through the leader

        first.kill()  # SIGKILL: no hand-over, its connections reset
        survivors = [n for n in cluster.nodes if n is not first]

        # The client still names the dead leader; the command goes to a member that answers,
        # which forwards it once a new leader is elected.
        during = orders.create("linus", 20)
        again = client.submit(retried).unwrap()  # the same request id, to the new leader
        assert again == sent_once

        second = poll(lambda: leader_among(survivors), TIMEOUT, "a new leader")
        poll(
            lambda: seen[-1].leader == second.endpoint,
            TIMEOUT,
            "the watch to report the new leader",
        )
        assert seen[-1].term > seen[0].term

        every = orders.all_orders()
        assert [o["customer"] for o in every].count("ada") == 1  # exactly once
        ids = {o["id"] for o in every}
        assert {before["id"], sent_once["id"], during["id"]} <= ids

        # Past the TTL since the kill: renewed through the new leader, the same token.
        threading.Event().wait(4.0)
        assert lease.is_valid() and not lease.lost.is_set(), lease.lost_reason
        held = client.query("catga.locks", "describe", ["nightly-report"])
        assert held["token"] == lease.token and held["owner"] == "cron@e2e"
        assert client.try_acquire("nightly-report") is None
        lease.release()
        after = client.acquire("nightly-report", ttl=3, timeout=5)
        assert after.token > lease.token
        after.release()
        watch.stop(timeout=TIMEOUT)

    # The token is checked: without it the routes say 401, and the client raises.
    response = requests.get(f"{survivors[0].url}/_catga/client/status", timeout=TIMEOUT)
    assert response.status_code == 401
    with ClusterClient(survivors[0].endpoint, timeout=2) as stranger:
        started_at = time.monotonic()
        with pytest.raises(ClientAuthError):
            stranger.status()
        assert time.monotonic() - started_at < 2
