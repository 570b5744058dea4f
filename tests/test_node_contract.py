"""The node's contract, pinned on real in-process nodes (threads, timers, the memory network;
memory and SQLite storages): what the Raft loop promises in its docstring and what the
public calls promise their callers.

- persist, then send: no vote and no append acknowledgement leaves before the disk has it, and
  a new term or vote alone is written too (the checking pair of :mod:`helpers.checking`);
- a proposal overwritten by a new leader fails with ProposalDroppedError, never "succeeds";
- a snapshot sent by the leader is restored by a lagging follower, which ends with every key;
- a storage whose persist raises stops the node, loudly: ``running`` turns False and waiting
  callers fail at once;
- a read barrier returns only once the node has applied up to its read index;
- a lease is invalid once its TTL ran out on its clock, even if its keeper thread is starved.

Each test kills a mutation of the node that the rest of the suite survives; the table is in
``tests/mutations.py`` (run it to see them killed) and ``tests/helpers/MUTATIONS.md``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import WAIT, LocalCluster
from helpers.checking import ContractChecker

from catga_sync import locks
from catga_sync.errors import (
    CatgaError,
    CommitTimeoutError,
    NoLeaderError,
    ProposalDroppedError,
)
from catga_sync.kv import ReplicatedDict
from catga_sync.locks import LeaseMonitor, LockTable
from catga_sync.node import ClusterNode
from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    PersistedState,
    ReadIndexResponse,
    VoteResponse,
)
from catga_sync.storage import MemoryStorage
from catga_sync.transport.memory import MemoryNetwork, MemoryTransport

STORAGES = ["memory", "sqlite"]


class Applied:
    """An applier that records what a node applied, in order."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, entry: Entry) -> object:
        with self.lock:
            self.entries.append(entry.data)
            return len(self.entries)


def with_kv(node: ClusterNode) -> None:
    node.register(ReplicatedDict())


def kv_of(node: ClusterNode) -> dict[str, object]:
    """This node's key-value map as it is now (no read barrier)."""
    return node.state(ReplicatedDict).local.items()


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- persist, then send ------------------------------------------------------------------------


def test_the_checker_flags_an_acknowledgement_the_disk_does_not_have() -> None:
    """The check can fail: a vote granted, or entries acknowledged, before they are durable."""
    checker = ContractChecker()
    storage = checker.storage(MemoryStorage("b"), "b")
    transport = checker.transport(MemoryTransport(MemoryNetwork(), "b", "b"), "b")
    storage.open()
    vote = VoteResponse(2, "b", "a", granted=True)
    transport.send([vote])
    assert len(checker.violations) == 1 and "with term 0 on disk" in checker.violations[0]
    storage.persist(
        hard_state=HardState(2, None, 0), entries=(), snapshot=None, snapshot_replaces_log=False
    )
    transport.send([vote])  # the term is on disk, the vote is not
    assert len(checker.violations) == 2 and "granted a vote" in checker.violations[1]
    storage.persist(
        hard_state=HardState(2, "a", 0), entries=(), snapshot=None, snapshot_replaces_log=False
    )
    transport.send([vote])  # now it is on disk
    assert len(checker.violations) == 2
    leader = checker.transport(MemoryTransport(MemoryNetwork(), "a", "a"), "a")
    checker.opened("a", PersistedState(HardState(2, "a", 0), None, ()))
    leader.send([AppendEntries(2, "a", "b", 0, 0, (Entry(1, 2),), commit=0)])
    transport.send([AppendResponse(2, "b", "a", index=1)])  # not persisted yet
    assert "acknowledged up to 1 with 0 on disk" in checker.violations[-1]
    storage.persist(
        hard_state=None, entries=(Entry(1, 1),), snapshot=None, snapshot_replaces_log=False
    )
    transport.send([AppendResponse(2, "b", "a", index=1)])  # an entry of the wrong term
    assert "of term 1, not 2" in checker.violations[-1]
    assert len(checker.violations) == 4
    with pytest.raises(AssertionError, match="4 message"):
        checker.assert_clean()


def test_the_checker_flags_anything_but_a_commit_index_written_without_an_fsync() -> None:
    checker = ContractChecker()
    storage = checker.storage(MemoryStorage("b"), "b")
    storage.open()

    def persist(hard: HardState | None, entries: tuple[Entry, ...] = (), sync: bool = True) -> None:
        storage.persist(
            hard_state=hard, entries=entries, snapshot=None, snapshot_replaces_log=False, sync=sync
        )

    persist(HardState(1, "b", 0))
    persist(HardState(1, "b", 1), sync=False)  # a commit index alone: allowed
    assert checker.violations == [] and checker.checked["unsynced write"] == 1
    persist(HardState(2, "b", 1), sync=False)  # a new term
    assert "wrote term 2 and vote b without an fsync" in checker.violations[-1]
    persist(None, (Entry(1, 2),), sync=False)  # entries
    assert "wrote 1 entries without an fsync" in checker.violations[-1]
    with pytest.raises(AssertionError):
        checker.assert_clean()


def test_no_vote_or_acknowledgement_leaves_before_the_disk_has_it(
    storage: str, tmp_path: Path
) -> None:
    """Elections (three of them, one after a restart) and 30 commands, every message checked
    against its sender's disk as it leaves: persist, then send."""
    cluster = LocalCluster(3, storage=storage, tmp_path=tmp_path, setup=with_kv)
    with cluster:
        leader = cluster.leader(committed=True)
        kv = leader.state(ReplicatedDict)
        for k in range(10):
            kv.set(f"k{k}", k)
        # The term is read before each change: once the transfer has returned, the old
        # leader may already have heard of its successor's term.
        term = leader.status.term
        leader.transfer_leadership()
        leader = cluster.leader(committed=True, above=term)
        for k in range(10, 20):
            leader.state(ReplicatedDict).set(f"k{k}", k)
        term = leader.status.term
        cluster.restart(leader)  # a crash: the others elect again, it rejoins from its disk
        leader = cluster.leader(committed=True, above=term)
        for k in range(20, 30):
            leader.state(ReplicatedDict).set(f"k{k}", k)
        committed = leader.read_barrier(timeout=WAIT)
        for node in cluster.nodes:
            node.wait_for(lambda s: s.last_applied >= committed, WAIT)
            assert kv_of(node) == {f"k{k}": k for k in range(30)}
    checker = cluster.checker
    assert checker is not None
    assert checker.violations == []
    # Not vacuous: votes, campaigns and acknowledgements of every kind went through the check.
    assert checker.checked["vote"] >= 3 and checker.checked["campaign"] >= 3
    assert checker.checked["append ack"] >= 30


# -- a proposal overwritten by a new leader ----------------------------------------------------


def test_a_proposal_overwritten_by_a_new_leader_fails_as_dropped() -> None:
    """A leader appends a proposal no follower gets, loses its leadership, and learns from its
    successor's log that the entry at that index is another one: the caller is told its write
    was dropped (retry it), not that it succeeded."""
    appliers = [Applied() for _ in range(3)]
    cluster = LocalCluster(3, node_options=lambda k: {"applier": appliers[k]})
    network = cluster.network
    assert network is not None
    with cluster, ThreadPoolExecutor(1) as pool:
        old = cluster.leader(committed=True)
        old.propose(b"before", timeout=WAIT)
        for node in cluster.nodes:
            node.wait_for(lambda s: s.last_applied >= old.status.last_applied, WAIT)
        # Its appends are lost; its heartbeats are not, so it stays leader and takes the write.
        sent_lost = threading.Event()

        def lost_append(m: object) -> bool:
            if not isinstance(m, AppendEntries) or m.frm != old.raft_id:
                return False
            if any(e.data == b"lost" for e in m.entries):
                sent_lost.set()
            return True

        network.drop(lost_append)
        term = old.status.term
        lost = pool.submit(old.propose, b"lost", timeout=3 * WAIT)
        # Appended on the old leader (its waiter registered), and sent nowhere.
        assert sent_lost.wait(WAIT), lost.exception(0) if lost.done() else "never sent"
        cluster.isolate(old)
        new = cluster.leader(above=term, other_than=old, committed=True, unique=False)
        new.propose(b"winner", timeout=WAIT)
        cluster.heal()
        network.allow(lost_append)
        with pytest.raises(ProposalDroppedError, match="overwritten by a new leader"):
            lost.result(WAIT)
        old.wait_for(lambda s: s.leader_endpoint == new.raft_id, WAIT)
        committed = new.read_barrier(timeout=WAIT)
        old.wait_for(lambda s: s.last_applied >= committed, WAIT)
    for applied in appliers:
        assert b"lost" not in applied.entries
        assert applied.entries == [b"before", b"winner"]


def test_a_write_on_a_node_cut_off_from_any_quorum_fails_as_no_leader_not_unknown() -> None:
    """A node cut off with no quorum never learns of a leader: its command never leaves it,
    so the caller must hear "no leader, not applied" (safe to send anew), never "outcome
    unknown" - and a command it did send somewhere keeps the "unknown"."""
    with LocalCluster(3) as cluster:
        leader = cluster.leader(committed=True)
        follower = cluster.follower()
        cluster.isolate(follower)
        follower.wait_for(lambda s: s.leader_endpoint is None, WAIT)
        with pytest.raises(NoLeaderError, match="was not applied"):
            follower.submit(b"x", timeout=0.5)
        # The leader of the two still joined: on a loaded machine a 150 ms election timeout
        # may have moved it meanwhile, and only a leader's own proposal leaves it.
        leader = cluster.leader(committed=True)
        cluster.isolate(leader)  # the leader's own proposal left it: outcome unknown
        with pytest.raises(CommitTimeoutError):
            leader.submit(b"y", timeout=0.3)


# -- a snapshot from the leader ----------------------------------------------------------------


def test_a_follower_overtaken_past_the_leaders_snapshot_restores_it(
    storage: str, tmp_path: Path
) -> None:
    """A follower cut off while the leader writes 70 keys and compacts its log every 10 entries
    can only catch up through the leader's snapshot: it must end with all 70 keys (not just the
    ones written after the snapshot), and come back with them after a restart."""
    cluster = LocalCluster(
        3, storage=storage, tmp_path=tmp_path, config={"snapshot_every": 10}, setup=with_kv
    )
    with cluster:
        leader = cluster.leader(committed=True)
        lagging = cluster.follower()
        behind = lagging.status.last_applied
        cluster.isolate(lagging)
        kv = leader.state(ReplicatedDict)
        for k in range(70):
            kv.set(f"k{k}", k)
        assert leader.stats.snapshots >= 6
        cluster.heal()
        committed = leader.read_barrier(timeout=WAIT)
        lagging.wait_for(lambda s: s.last_applied >= committed, WAIT)
        expected = {f"k{k}": k for k in range(70)}
        assert lagging.status.last_applied - behind >= 70
        assert cluster.checker is not None
        assert cluster.checker.image(lagging.raft_id).installed_snapshots >= 1
        assert kv_of(lagging) == expected
        restarted = cluster.restart(lagging)
        restarted.wait_for(lambda s: s.last_applied >= committed, WAIT)
        assert kv_of(restarted) == expected


# -- a storage that fails ----------------------------------------------------------------------


def test_a_persist_that_raises_stops_the_node_and_fails_its_callers() -> None:
    """The Raft loop's promise for a storage failure: stop, loudly. The caller waiting on the
    write fails at once with the storage's error (not a timeout, not a success), the node says
    it is not running, later calls say why, and the others carry on without it."""
    cluster = LocalCluster(3, node_options=lambda k: {"applier": Applied()})
    with cluster:
        leader = cluster.leader(committed=True)
        leader.propose(b"fine", timeout=WAIT)
        cluster.fail_persist(leader)
        started = time.monotonic()
        with pytest.raises(CatgaError) as caught:
            leader.propose(b"never durable", timeout=WAIT)
        assert not isinstance(caught.value, CommitTimeoutError)
        assert time.monotonic() - started < WAIT / 2
        assert f"node {leader.node_id} failed" in str(caught.value)
        assert "is full (a fault injected by the test)" in str(caught.value)
        leader.wait_for(lambda s: not s.running, WAIT)
        assert not leader.running and not leader.status.running
        assert not leader.status.is_leader
        with pytest.raises(CatgaError, match=r"is not running \(it failed"):
            leader.propose(b"again", timeout=1)
        with pytest.raises(CatgaError, match=r"is not running \(it failed"):
            leader.read_barrier(timeout=1)
        survivor = cluster.leader(other_than=leader, committed=True)
        assert survivor.propose(b"on without it", timeout=WAIT) is not None


# -- a read barrier while behind ---------------------------------------------------------------


def test_a_read_barrier_waits_until_the_node_has_applied_its_read_index() -> None:
    """A follower whose appends are lost gets the leader's read index for its read but cannot
    apply up to it: its read barrier must not return (it times out), and returns once the
    follower has caught up, with the write visible."""
    cluster = LocalCluster(3, setup=with_kv)
    network = cluster.network
    assert network is not None
    with cluster:
        leader = cluster.leader(committed=True)
        follower = cluster.follower()
        starved = network.drop(lambda m: isinstance(m, AppendEntries) and m.to == follower.raft_id)
        leader.state(ReplicatedDict).set("written", 1)
        written = leader.read_barrier(timeout=WAIT)
        answered = network.watch(
            lambda m: (
                isinstance(m, ReadIndexResponse) and m.to == follower.raft_id and m.index >= written
            )
        )
        with pytest.raises(CommitTimeoutError):
            follower.read_barrier(timeout=1.0)
        answered.wait(WAIT, "a read index for the follower")  # held by the apply, not the leader
        assert follower.status.last_applied < written
        assert "written" not in kv_of(follower)
        network.allow(starved)
        assert follower.read_barrier(timeout=WAIT) >= written
        assert follower.status.last_applied >= written
        assert kv_of(follower)["written"] == 1


# -- a lease whose keeper is starved -----------------------------------------------------------


class SteppedClock:
    """The monotonic clock, plus whatever the test adds (a pause nobody noticed)."""

    def __init__(self) -> None:
        self.added = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.added


@pytest.fixture
def clocked_follower() -> Iterator[tuple[ClusterNode, SteppedClock]]:
    """A follower whose lease clock the test steps (the leader's, which expires leases, runs
    on the real clock). Over HTTP: a follower forwards its lock commands to the leader."""
    clocks: dict[str, SteppedClock] = {}

    def inject(node: ClusterNode) -> None:
        monitor = node.state(LockTable).machine.listener
        assert isinstance(monitor, LeaseMonitor)
        monitor.clock = clocks.setdefault(node.node_id, SteppedClock())

    with LocalCluster(3, transport="http", setup=inject) as cluster:
        follower = cluster.follower(committed=True)
        yield follower, clocks[follower.node_id]


def test_a_lease_is_invalid_past_its_ttl_even_while_its_keeper_sleeps(
    clocked_follower: tuple[ClusterNode, SteppedClock],
) -> None:
    """``is_valid()`` reads the clock itself: when the TTL has run out on the lease's clock,
    the lease is invalid although the thread that would mark it lost has not run (starved, or
    asleep on the real clock as here) and the lock table still says "held"."""
    node, clock = clocked_follower
    lease = locks.acquire(node, "report", ttl=30, auto_renew=False)
    assert lease.is_valid() and 29 < lease.remaining() <= 30
    clock.added = 30.0  # thirty seconds pass at once, as for a process paused that long
    assert not lease.is_valid()
    assert lease.remaining() == 0.0
    assert not lease.lost.is_set()  # the keeper did not notice: is_valid() saw it alone
    assert node.state(LockTable).describe("report")["token"] == lease.token
