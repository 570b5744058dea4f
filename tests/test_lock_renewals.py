"""Lease renewals through one node share log entries (catga_sync/locks/renewals.py), and one
lease keeper per node renews every lease held through it (catga_sync/locks/keeper.py): no
thread per lease, the leases due together in shared entries, a lost lease told at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import LocalCluster

from catga_sync import locks
from catga_sync.errors import CommitTimeoutError, InvalidLockRequestError, LockNotHeldError
from catga_sync.locks import LeaseMonitor, LockTable
from catga_sync.locks.table import MAX_RENEWALS
from catga_sync.node import ClusterNode

WAIT = 10.0


@pytest.fixture
def leader() -> Iterator[ClusterNode]:
    # Slow timeouts: the tests hold the leader's loop up for a moment, which must not look
    # like a dead leader to the followers.
    cluster = LocalCluster(
        3, committed_leader=True, wait=WAIT, election_timeout=1.0, heartbeat_interval=0.1
    ).start()
    try:
        yield cluster.leader()
    finally:
        cluster.stop()


def monitor_of(node: ClusterNode) -> LeaseMonitor:
    listener = node.state(LockTable).machine.listener
    assert isinstance(listener, LeaseMonitor)
    return listener


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_renewals_that_queue_behind_one_on_its_way_share_the_next_entry(
    leader: ClusterNode,
) -> None:
    leases = [locks.acquire(leader, f"r{k}", ttl=60, auto_renew=False) for k in range(21)]
    group = monitor_of(leader).renewals
    stalled, go = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def stall() -> None:
        stalled.set()
        go.wait(WAIT)

    def renew(lease: locks.Lease) -> None:
        try:
            lease.renew()
        except BaseException as exc:
            failures.append(exc)

    # The loop is held up, so the first renewal's entry waits; twenty more queue meanwhile.
    holder = threading.Thread(target=lambda: leader.run_on_loop(stall, timeout=WAIT))
    holder.start()
    assert stalled.wait(WAIT)
    first = threading.Thread(target=renew, args=(leases[0],))
    first.start()
    until(lambda: group._sending, "the first renewal to be on its way")
    others = [threading.Thread(target=renew, args=(lease,)) for lease in leases[1:]]
    for thread in others:
        thread.start()
    until(lambda: len(group._queue) == 20, "twenty renewals to queue")
    go.set()
    for thread in [holder, first, *others]:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert failures == []
    assert (group.entries, group.renewals) == (2, 21)
    assert all(lease.is_valid() for lease in leases)


def test_a_renewal_that_waits_past_its_timeout_is_not_sent(leader: ClusterNode) -> None:
    lease = locks.acquire(leader, "late", ttl=60, auto_renew=False)
    group = monitor_of(leader).renewals
    stalled, go = threading.Event(), threading.Event()

    def stall() -> None:
        stalled.set()
        go.wait(WAIT)

    holder = threading.Thread(target=lambda: leader.run_on_loop(stall, timeout=WAIT))
    holder.start()
    assert stalled.wait(WAIT)
    first = threading.Thread(target=lambda: group.renew("late", lease.token, WAIT))
    first.start()
    until(lambda: group._sending, "the first renewal to be on its way")
    started = time.monotonic()
    with pytest.raises(CommitTimeoutError, match="was not sent"):
        group.renew("late", lease.token, 0.2)
    assert time.monotonic() - started < WAIT / 2
    go.set()
    for thread in (holder, first):
        thread.join(WAIT)
    assert (group.entries, group.renewals) == (1, 1)


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


# -- the lease keeper ------------------------------------------------------------------------


def lease_threads(node: ClusterNode) -> list[str]:
    """This node's keeper and endings threads (the other nodes' and clusters' are not counted)."""
    prefix = f"catga-lease-keeper-{node.node_id}"
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix))


def test_many_leases_through_one_node_are_kept_by_one_thread(leader: ClusterNode) -> None:
    before = {t.ident for t in threading.enumerate()}
    leases = [locks.acquire(leader, f"k{n}", ttl=60) for n in range(50)]
    keeper = monitor_of(leader).keeper
    assert keeper.kept == 50
    new = [t.name for t in threading.enumerate() if t.ident not in before]
    assert new == [f"catga-lease-keeper-{leader.node_id}"]  # one thread for fifty leases
    for lease in leases:
        lease.release()
    until(lambda: keeper.kept == 0, "the released leases to be let go")
    until(lambda: lease_threads(leader) == [], "the keeper's thread to end with its last lease")
    with locks.acquire(leader, "again", ttl=60) as again:  # and it starts again with the next
        assert again.is_valid()
        assert lease_threads(leader) == [f"catga-lease-keeper-{leader.node_id}"]


def test_leases_due_together_are_renewed_in_shared_entries(leader: ClusterNode) -> None:
    count = MAX_RENEWALS + 200  # more than one entry holds
    group = monitor_of(leader).renewals
    names = [f"s{n}" for n in range(count)]
    leases: list[locks.Lease] = []
    failures: list[BaseException] = []

    def take(name: str) -> None:
        try:
            leases.append(locks.acquire(leader, name, ttl=10))
        except BaseException as exc:
            failures.append(exc)

    for chunk in range(0, count, 100):  # taken in a few quick rounds: they fall due together
        threads = [threading.Thread(target=take, args=(name,)) for name in names[chunk:][:100]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    assert failures == [] and len(leases) == count
    entries, renewals = group.entries, group.renewals
    tokens = {lease.name: lease.token for lease in leases}
    deadline = time.monotonic() + 6 * WAIT  # two rounds come 3.3 s apart; slower when loaded
    while group.renewals - renewals < 2 * count:
        assert time.monotonic() < deadline, "timed out waiting for two rounds of renewals"
        time.sleep(0.05)
    assert all(lease.is_valid() for lease in leases)
    # Shared: only as many entries as the size bounds ask, a few per round.
    assert (group.renewals - renewals) / (group.entries - entries) > 50
    table = leader.state(LockTable)
    assert {name: table.describe(name)["token"] for name in tokens} == tokens  # the same grants
    for lease in leases:
        lease.release()


def test_a_lease_whose_lock_is_freed_is_lost_at_once_and_its_callback_runs_apart(
    leader: ClusterNode,
) -> None:
    stuck, go = threading.Event(), threading.Event()
    callback_threads: list[str] = []

    def slow_callback(lease: locks.Lease) -> None:
        callback_threads.append(threading.current_thread().name)
        stuck.set()
        go.wait(WAIT)  # a callback that takes its time holds up no other lease

    doomed = locks.acquire(leader, "doomed", ttl=60)
    doomed.on_lost(slow_callback)
    kept = locks.acquire(leader, "kept", ttl=1.5)
    leader.state(LockTable).release("doomed", doomed.token)  # freed behind the holder's back
    assert doomed.lost.wait(WAIT)  # told by its watch, not at its next renewal 20 s later
    assert stuck.wait(WAIT)
    assert callback_threads == [f"catga-lease-keeper-{leader.node_id}-endings"]
    sent = kept.valid_until
    until(lambda: kept.valid_until > sent + 0.3, "the other lease to be renewed meanwhile")
    assert kept.is_valid()
    go.set()
    with pytest.raises(LockNotHeldError, match="lost before its release"):
        doomed.release()
    kept.release()


class _Holding:
    """A grant that its watch still shows as held (what a refused renewal can meet)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self.closed = False

    def granted(self) -> bool:
        return True

    def renew(self, name: str, token: int, timeout: float) -> None:
        raise AssertionError("the keeper renews in batches")

    def release(self, name: str, token: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _RefusingRenewals:
    """Renews every grant but those of ``refused``, and counts the batches."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.batches: list[list[tuple[str, int]]] = []

    def renew_batch(
        self, grants: list[tuple[str, int]], timeout: float
    ) -> list[BaseException | None]:
        self.batches.append(grants)
        return [
            LockNotHeldError(f"lock {name!r} is not held with token {token}")
            if name == self.refused
            else None
            for name, token in grants
        ]


def test_a_refused_renewal_marks_only_its_own_lease_lost() -> None:
    from catga_sync.locks.keeper import LeaseKeeper
    from catga_sync.locks.lease import Lease

    renewals = _RefusingRenewals("two")
    keeper = LeaseKeeper("catga-lease-keeper-test", renewals, time.monotonic)  # type: ignore[arg-type]
    sent = time.monotonic() - 0.5  # both due (in their window) a quarter second from now
    lost: list[str] = []
    leases = {}
    for name in ("one", "two"):
        lease = Lease(_Holding(), name=name, token=7, owner="me", ttl=3.0, sent=sent,
                      auto_renew=True, clock=time.monotonic)  # fmt: skip
        lease.on_lost(lambda gone: lost.append(gone.name))
        leases[name] = lease
        keeper.add(lease)
    until(lambda: lost == ["two"], "the refused lease to be lost")
    until(lambda: keeper.kept == 1, "the lost lease to be let go")
    assert renewals.batches[0] == [("one", 7), ("two", 7)]  # renewed together
    assert leases["two"].lost_reason == "lock 'two' is not held with token 7"
    assert leases["two"]._holding.closed  # type: ignore[attr-defined]
    assert leases["one"].is_valid() and not leases["one"].lost.is_set()
    assert leases["one"].valid_until > sent + 3.0  # renewed from when the batch was sent
    leases["one"].release()
    until(lambda: keeper.kept == 0, "the released lease to be let go")
    assert lost == ["two"]  # told once
    assert all(("two", 7) not in batch for batch in renewals.batches[1:])  # never renewed again


class _SlowNode:
    """A node whose every ``renew_many`` entry takes ``seconds`` to commit."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent: list[int] = []
        self.times: list[float] = []

    def state(self, machine: type, *, timeout: float) -> _SlowNode:
        return self

    def renew_many(self, pairs: list[list[object]]) -> list[dict[str, object]]:
        self.times.append(time.monotonic())
        time.sleep(self.seconds)
        self.sent.append(len(pairs))
        return [{} for _ in pairs]


def test_a_batch_of_renewals_keeps_to_one_deadline_over_all_its_entries() -> None:
    from catga_sync.locks.renewals import RenewalGroup

    node = _SlowNode(0.2)
    group = RenewalGroup(node)  # type: ignore[arg-type]
    grants = [(f"n{k}", k + 1) for k in range(4 * MAX_RENEWALS)]  # four entries at least
    started = time.monotonic()
    errors = group.renew_batch(grants, timeout=0.3)
    assert all(at < started + 0.3 for at in node.times)  # none sent once the time was up
    assert 1 <= len(node.sent) <= 2  # not all four: each entry took 0.2 s
    renewed = sum(node.sent)
    assert errors[:renewed] == [None] * renewed
    assert len(errors) == len(grants) > renewed
    assert all(isinstance(e, CommitTimeoutError) for e in errors[renewed:])
