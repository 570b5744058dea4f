"""Distributed locks on three real nodes talking HTTP on loopback: acquire from the leader and
from followers, waiters woken in order, timeouts, lost leases and dead holders, held locks
across a leader failover, bad requests; and mutual exclusion under a leader kill and a holder
paused past its TTL, with a fenced resource (no stale write accepted) and without one (the lost
update the fence prevents, so the check can fail)."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import pytest
from flask import Flask
from helpers import LocalCluster, free_ports

from catga_sync import locks
from catga_sync.errors import (
    CatgaError,
    InvalidLockRequestError,
    LockNotAcquiredError,
    LockNotHeldError,
    StaleTokenError,
)
from catga_sync.fencing import FencedResource
from catga_sync.locks import DistributedLock, LeaseMonitor, LockTable
from catga_sync.node import ClusterNode
from catga_sync.web.extension import CatgaCluster

WAIT = 10.0
T = TypeVar("T")


class Cluster(LocalCluster):
    """Three nodes over HTTP. Its :meth:`leader` is the running node that says it leads and
    has committed its term's no-op."""

    def __init__(self) -> None:
        super().__init__(3, transport="http", committed_leader=True, wait=WAIT)

    def kill(self, node: ClusterNode) -> None:
        """Stop ``node`` at once, without handing leadership over (as if it crashed)."""
        self.crash(node)


def wait_until(find: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        pause.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def monitor_of(node: ClusterNode) -> LeaseMonitor:
    listener = node.state(LockTable).machine.listener
    assert isinstance(listener, LeaseMonitor)
    return listener


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        c.leader()
        yield c
    finally:
        c.stop()


# -- acquiring ------------------------------------------------------------------------------


def test_a_lock_is_acquired_from_the_leader_and_from_a_follower(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.followers()[0]
    with locks.lock(leader, "report", ttl=5, owner="leader-worker") as first:
        assert first.is_valid()
        assert 4 < first.remaining() <= 5
        for node in cluster.nodes:  # linearizable reads see the grant everywhere
            described = node.state(LockTable).describe("report")
            assert described["token"] == first.token
            assert described["owner"] == "leader-worker"
        assert locks.try_acquire(follower, "report") is None
    assert not first.is_valid()
    with locks.lock(follower, "report", ttl=5) as second:
        assert second.token > first.token
        assert second.is_valid()
    assert leader.state(LockTable).describe("report") is None


def test_the_guides_api_works_through_the_coordinator(cluster: Cluster) -> None:
    follower = cluster.followers()[0]
    lease = DistributedLock.try_acquire(
        follower.coordinator, resource="critical-operation", timeout=5
    )
    assert lease is not None and lease.is_valid()
    with lease:
        again = DistributedLock.try_acquire(
            cluster.leader().coordinator, resource="critical-operation", timeout=0.2
        )
        assert again is None
    assert not lease.is_valid()
    assert not lease.lost.is_set()  # released, not lost


def test_durations_may_be_timedeltas_as_in_the_configuration(cluster: Cluster) -> None:
    follower, leader = cluster.followers()[0], cluster.leader()
    lease = DistributedLock.try_acquire(
        follower.coordinator, "timed", timeout=timedelta(seconds=5), ttl=timedelta(seconds=10)
    )
    assert lease is not None and lease.is_valid()
    with lease:
        assert lease.ttl == 10.0
        started = time.monotonic()
        assert locks.try_acquire(leader, "timed", timeout=timedelta(milliseconds=200)) is None
        assert time.monotonic() - started >= 0.2
        with pytest.raises(LockNotAcquiredError, match=r"within 0\.2s"):
            locks.acquire(leader, "timed", timeout=timedelta(milliseconds=200))
    with locks.lock(leader, "timed", ttl=timedelta(seconds=5), timeout=timedelta(0)) as again:
        assert again.ttl == 5.0
    with pytest.raises(InvalidLockRequestError, match=r"or a timedelta"):
        locks.acquire(leader, "timed", ttl=timedelta(days=400))


def test_waiters_are_woken_in_arrival_order_when_the_lock_is_freed(cluster: Cluster) -> None:
    leader = cluster.leader()
    one, two = cluster.followers()
    holder = locks.acquire(leader, "queue", ttl=5)
    got: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def wait_for_it(k: int, node: ClusterNode) -> None:
        try:
            lease = locks.acquire(node, "queue", ttl=5, timeout=20, owner=f"waiter{k}")
            got.append((k, lease.token))
            lease.release()
        except BaseException as exc:
            errors.append(exc)

    threads = []
    for k, node in enumerate([one, leader, two, one]):
        thread = threading.Thread(target=wait_for_it, args=(k, node))
        thread.start()
        threads.append(thread)
        wait_until(  # queued before the next one asks
            lambda k=k: len(leader.state(LockTable).local.describe("queue")["waiters"]) == k + 1,
            f"waiter {k} to be queued",
        )
    assert leader.state(LockTable).describe("queue")["waiters"] == [f"waiter{k}" for k in range(4)]
    holder.release()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors
    assert [k for k, _ in got] == [0, 1, 2, 3]
    tokens = [holder.token] + [token for _, token in got]
    assert tokens == sorted(set(tokens))


def test_a_waiter_that_times_out_leaves_the_queue(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.followers()[0]
    with locks.lock(leader, "busy", ttl=5):
        started = time.monotonic()
        with pytest.raises(LockNotAcquiredError, match=r"within 0\.3s"):
            locks.acquire(follower, "busy", ttl=5, timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert leader.state(LockTable).describe("busy")["waiters"] == []
        with pytest.raises(LockNotAcquiredError, match="held by"):
            locks.acquire(follower, "busy", timeout=0)


# -- lost leases, dead holders, failover ------------------------------------------------------


def test_a_holder_that_stops_renewing_is_told_and_the_next_waiter_gets_the_lock(
    cluster: Cluster,
) -> None:
    leader, follower = cluster.leader(), cluster.followers()[0]
    paused = locks.acquire(follower, "stalled", ttl=0.5, auto_renew=False)
    told: list[str | None] = []
    paused.on_lost(lambda lease: told.append(lease.lost_reason))
    successor = locks.acquire(leader, "stalled", ttl=5, timeout=10)
    took_over = time.monotonic()
    try:
        assert took_over >= paused.valid_until  # never two valid holders
        assert not paused.is_valid()
        assert paused.lost.wait(WAIT)
        wait_until(lambda: told, "the on_lost callback")
        assert "TTL ran out" in (told[0] or "")
        assert successor.token > paused.token
        with pytest.raises(LockNotHeldError, match="lost before its release"):
            paused.release()
    finally:
        successor.release()


def test_a_dead_holders_lock_frees_within_its_ttl(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.followers()[0]
    lease = locks.acquire(follower, "orphan", ttl=1.0)  # renewing, until its node dies
    cluster.kill(follower)
    killed = time.monotonic()
    successor = locks.acquire(leader, "orphan", ttl=5, timeout=10)
    freed_after = time.monotonic() - killed
    try:
        assert successor.token > lease.token
        assert time.monotonic() >= lease.valid_until
        assert freed_after < 1.0 + 2.0, f"freed {freed_after:.2f}s after the holder died"
    finally:
        successor.release()


def test_a_held_lock_survives_a_leader_failover_with_its_token(cluster: Cluster) -> None:
    old_leader = cluster.leader()
    follower = cluster.followers()[0]
    lease = locks.acquire(follower, "survivor", ttl=3.0)
    cluster.kill(old_leader)
    new_leader = cluster.leader()
    assert new_leader is not old_leader
    assert new_leader.state(LockTable).describe("survivor")["token"] == lease.token
    # Renewals reach the new leader: the lease outlives its TTL and is never lost.
    assert not lease.lost.wait(lease.ttl + 0.5)
    assert lease.is_valid()
    lease.release()
    with locks.lock(follower, "survivor", ttl=3.0) as after:
        assert after.token > lease.token


def test_a_new_leader_restarts_the_lease_clock_at_its_election(cluster: Cluster) -> None:
    old_leader = cluster.leader()
    follower = cluster.followers()[0]
    lease = locks.acquire(follower, "clock", ttl=2.0, auto_renew=False)
    before = monitor_of(old_leader).deadline("clock")
    assert before is not None
    killed = time.monotonic()
    cluster.kill(old_leader)
    new_leader = cluster.leader()
    found = time.monotonic()
    restarted = monitor_of(new_leader).deadline("clock")
    assert restarted is not None
    # Counted from the new leader's election (after the kill, before we found it leading),
    # not from the grant.
    assert killed + lease.ttl <= restarted <= found + lease.ttl
    successor = locks.acquire(new_leader, "clock", ttl=5, timeout=10)
    assert time.monotonic() >= restarted
    successor.release()


# -- bad requests -----------------------------------------------------------------------------


def test_bad_requests_are_refused_with_typed_errors_and_change_nothing(cluster: Cluster) -> None:
    leader, follower = cluster.leader(), cluster.followers()[0]
    lease = locks.acquire(leader, "kept", ttl=5)
    held = leader.state(LockTable).held()
    commit = leader.status.commit_index
    for name, kwargs in [
        ("", {}),
        ("n" * 10_000, {}),
        ("nul\x00", {}),
        ("x", {"ttl": 0}),
        ("x", {"ttl": -5}),
        ("x", {"ttl": float("nan")}),
        ("x", {"ttl": 1e30}),
        ("x", {"timeout": float("nan")}),
    ]:
        with pytest.raises(InvalidLockRequestError):
            locks.acquire(follower, name, **kwargs)
    assert leader.status.commit_index == commit  # refused before anything was proposed
    # Straight to the table from a follower: refused in apply, the error crosses the hop.
    with pytest.raises(InvalidLockRequestError):
        follower.state(LockTable).acquire("", "holder", "owner", 5.0, 0.0)
    with pytest.raises(LockNotHeldError, match="not held with token"):
        follower.state(LockTable).release("kept", lease.token + 1000)
    lease.release()
    with pytest.raises(LockNotHeldError, match="already released"):
        lease.release()
    assert "kept" in held
    for node in cluster.nodes:
        assert node.state(LockTable).held() == {}


def test_the_flask_extension_lock_raises_when_not_acquired() -> None:
    app = Flask("test_locks_cluster")
    app.config.update(
        CATGA_CLUSTER_LOCAL_NODE_ENDPOINT=f"http://127.0.0.1:{free_ports(1)[0]}",
        CATGA_CLUSTER_NODE_ID="solo",
    )
    cluster = CatgaCluster(app)
    try:
        cluster.state_of(app).node.wait_for(lambda s: s.is_leader, WAIT)
        with app.app_context(), cluster.lock("nightly", ttl=10) as lease:
            assert lease.is_valid() and lease.token > 0
            with pytest.raises(LockNotAcquiredError), cluster.lock("nightly", timeout=0.1):
                pass
        assert not lease.is_valid()
    finally:
        cluster.stop(app)


# -- mutual exclusion under failures ------------------------------------------------------------


@dataclass
class Run:
    """What the workers of one stress run saw."""

    intervals: list[tuple[float, float, int]] = field(default_factory=list)
    """(acquired at, valid until or released at, token) of every lease."""
    writes: int = 0
    """Increments whose write was accepted."""
    stale_refused: int = 0
    paused_token: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PlainResource:
    """The same counter without a fence: every write is accepted."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def read(self, key: str, default: int = 0, *, token: int | None = None) -> int:
        return self.values.get(key, default)

    def write(self, key: str, value: int, token: int) -> None:
        self.values[key] = value


TTL = 1.0


def stress(cluster: Cluster, resource: FencedResource | PlainResource) -> Run:
    """Two workers per node increment a counter under one lock. After a few increments the
    leader is killed; then one surviving worker pauses with its lock held (renewals stopped,
    as in a process pause) until its lease is lost and another holder has written, and writes
    its stale increment."""
    run = Run()
    killed = threading.Event()
    pause_claimed = threading.Lock()
    paused_done = threading.Event()
    changed = threading.Condition()
    writes_at_end = [0]
    stop = threading.Event()

    def worker(node: ClusterNode) -> None:
        while not stop.is_set() and node.running:
            sleeper = killed.is_set() and pause_claimed.acquire(blocking=False)
            try:
                lease = locks.acquire(node, "counter", ttl=TTL, timeout=20, auto_renew=not sleeper)
            except CatgaError:
                if sleeper:
                    pause_claimed.release()
                continue  # a failover, or this node died (the loop ends)
            acquired = time.monotonic()
            try:
                value = resource.read("n", 0, token=lease.token)
                if sleeper:  # the pause: past the TTL, and until someone else has written
                    seen = run.writes
                    if not lease.lost.wait(WAIT):
                        run.errors.append("the paused lease was never lost")
                    with changed:
                        if not changed.wait_for(lambda seen=seen: run.writes > seen, WAIT):
                            run.errors.append("nobody wrote while the holder was paused")
                    run.paused_token = lease.token
                end = min(time.monotonic(), lease.valid_until)
                resource.write("n", value + 1, lease.token)
                with changed:
                    run.writes += 1
                    changed.notify_all()
            except StaleTokenError:
                end = min(time.monotonic(), lease.valid_until)
                with run.lock:
                    run.stale_refused += 1
                if sleeper and not run.paused_token:  # refused before the pause: pick another
                    sleeper = False
                    pause_claimed.release()
            finally:
                if sleeper:
                    paused_done.set()
            with run.lock:
                run.intervals.append((acquired, end, lease.token))
            with contextlib.suppress(CatgaError):  # lost, or no leader to take it: it expires
                lease.release()

    threads = [
        threading.Thread(target=worker, args=(node,), daemon=True)
        for node in cluster.nodes
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: run.writes >= 6, "a few increments")
    cluster.kill(cluster.leader())
    killed.set()
    assert paused_done.wait(WAIT * 2), "no worker paused"
    writes_at_end[0] = run.writes
    wait_until(lambda: run.writes >= writes_at_end[0] + 4, "increments after the pause")
    stop.set()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(t.is_alive() for t in threads)
    assert not run.errors
    return run


def check_mutual_exclusion(run: Run) -> None:
    intervals = sorted(run.intervals)
    for (_, end, token), (next_start, _, next_token) in itertools.pairwise(intervals):
        assert end <= next_start, f"token {token} valid until {end}, {next_token} from {next_start}"
        assert next_token > token, "tokens must increase from one holder to the next"


def test_mutual_exclusion_with_a_fenced_resource_under_a_leader_kill_and_a_pause(
    cluster: Cluster,
) -> None:
    resource = FencedResource()
    run = stress(cluster, resource)
    check_mutual_exclusion(run)
    assert run.stale_refused >= 1  # the paused holder's write, at least
    assert run.paused_token in resource.refused
    assert resource.read("n") == run.writes  # no increment lost
    assert resource.accepted == sorted(resource.accepted)


def test_the_same_run_without_a_fence_loses_an_update(cluster: Cluster) -> None:
    resource = PlainResource()
    run = stress(cluster, resource)
    check_mutual_exclusion(run)  # the lease alone kept the *valid* holders apart...
    assert resource.read("n") < run.writes  # ...but the paused holder's late write lost one
