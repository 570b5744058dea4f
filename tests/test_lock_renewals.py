"""Lease renewals through one node share log entries (catga_sync/locks/renewals.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from helpers import LocalCluster

from catga_sync import locks
from catga_sync.errors import InvalidLockRequestError, LockNotHeldError
from catga_sync.locks import LeaseMonitor, LockTable
from catga_sync.locks.table import MAX_RENEWALS
from catga_sync.node import ClusterNode

WAIT = 10.0


@pytest.fixture
def leader() -> Iterator[ClusterNode]:
    cluster = LocalCluster(3, committed_leader=True, wait=WAIT).start()
    try:
        yield cluster.leader()
    finally:
        cluster.stop()


def monitor_of(node: ClusterNode) -> LeaseMonitor:
    listener = node.state(LockTable).machine.listener
    assert isinstance(listener, LeaseMonitor)
    return listener


def test_renewals_that_queue_behind_one_on_its_way_share_the_next_entry(
    leader: ClusterNode,
) -> None:
    leases = [locks.acquire(leader, f"r{k}", ttl=60, auto_renew=False) for k in range(21)]
    group = monitor_of(leader).renewals
    stalled, go = threading.Event(), threading.Event()

    def stall() -> None:
        stalled.set()
        go.wait(WAIT)

    # The loop is held up, so the first renewal's entry waits; twenty more queue meanwhile.
    holder = threading.Thread(target=lambda: leader.run_on_loop(stall, timeout=WAIT))
    holder.start()
    assert stalled.wait(WAIT)
    first = threading.Thread(target=leases[0].renew)
    first.start()
    while not group._sending:
        threading.Event().wait(0.001)
    others = [threading.Thread(target=lease.renew) for lease in leases[1:]]
    for thread in others:
        thread.start()
    while len(group._queue) < 20:
        threading.Event().wait(0.001)
    go.set()
    for thread in [holder, first, *others]:
        thread.join(WAIT)
    assert (group.entries, group.renewals) == (2, 21)
    assert all(lease.is_valid() for lease in leases)


def test_a_grant_gone_fails_its_own_renewal_only(leader: ClusterNode) -> None:
    kept = locks.acquire(leader, "kept", ttl=60, auto_renew=False)
    gone = locks.acquire(leader, "gone", ttl=60, auto_renew=False)
    table = leader.state(LockTable)
    answers = table.renew_many([["kept", kept.token], ["gone", gone.token + 1]])
    assert answers[0] == {"token": kept.token, "ttl": 60.0}
    assert "not held with token" in answers[1]["error"]
    gone.release()
    with pytest.raises(LockNotHeldError):
        monitor_of(leader).renewals.renew("gone", gone.token, WAIT)
    kept.renew()  # the group goes on after a refusal
    assert kept.is_valid()


@pytest.mark.parametrize(
    "renewals",
    [[], "x", [["ok", 1], ["bad"]], [["ok", 1], ["", 1]], [["ok", 1], ["ok", -1]]],
)
def test_a_malformed_batch_renews_nothing(leader: ClusterNode, renewals: object) -> None:
    lease = locks.acquire(leader, "ok", ttl=60, auto_renew=False)
    table = leader.state(LockTable)
    since = table.machine.locks["ok"]["since"]
    with pytest.raises(InvalidLockRequestError):
        table.renew_many(renewals)  # type: ignore[arg-type]
    leader.read_barrier(timeout=WAIT)
    assert table.machine.locks["ok"]["since"] == since
    assert lease.is_valid()


def test_a_batch_holds_at_most_max_renewals(leader: ClusterNode) -> None:
    with pytest.raises(InvalidLockRequestError, match=str(MAX_RENEWALS)):
        leader.state(LockTable).renew_many([["x", 1]] * (MAX_RENEWALS + 1))
