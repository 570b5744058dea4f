"""The classic Raft lab scenarios (MIT 6.824, labs 2A–2D) on the seeded cluster simulator.

Each test is a short story told as init / act / check, and each runs over a handful of seeds so
that several schedules are covered. Beyond what the tests assert, the simulator checks Raft's
safety properties (paper Figure 3) after every event and raises ``InvariantViolation``.

Time is in ticks; the election timeout T is 10 ticks (each term's is drawn from [T, 2T)).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

import pytest

from catga_sync.errors import CatgaError, NoLeaderError
from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    ConfigChangeType,
    Entry,
    InstallSnapshot,
    Message,
    Role,
    VoteRequest,
)
from catga_sync.testing import InvariantViolation, SimulatedCluster, _Node

SEEDS = range(6)
ELECTION = 10
"""The election timeout T, in ticks."""


class RecordingCluster(SimulatedCluster):
    """A simulated cluster that also records every message a node sends (before any fault)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Message] = []

    def _send(self, sender: _Node, message: Message) -> None:
        self.sent.append(message)
        super()._send(sender, message)

    def count(self, kind: type, to: str | None = None) -> int:
        return sum(1 for m in self.sent if isinstance(m, kind) and (to is None or m.to == to))

    def log_mismatch_rejections(self) -> int:
        """AppendEntries refused because the follower's log did not match at ``prev_index``
        (not the stale-term refusals that tell an old leader to step down)."""
        return sum(
            1 for m in self.sent if isinstance(m, AppendResponse) and m.reject and m.index > 0
        )


# --------------------------------------------------------------------------------------------
# Helpers


def followers_of(cluster: SimulatedCluster, leader: str) -> list[str]:
    return sorted(n for n in cluster.nodes if n != leader)


def leaders_among(cluster: SimulatedCluster, nodes: Iterable[str]) -> list[str]:
    alive = set(cluster.alive())
    return [n for n in nodes if n in alive and cluster.core(n).role is Role.LEADER]


def wait_for_leader_among(
    cluster: SimulatedCluster, nodes: Iterable[str], max_ticks: int = 50 * ELECTION
) -> str:
    group = sorted(nodes)
    cluster.run_until(lambda: len(leaders_among(cluster, group)) == 1, max_ticks=max_ticks)
    return leaders_among(cluster, group)[0]


def commit_on(
    cluster: SimulatedCluster,
    data: bytes,
    nodes: Iterable[str],
    max_ticks: int = 50 * ELECTION,
) -> Entry:
    """Propose ``data`` to the leader among ``nodes`` and step until all of them applied it."""
    group = sorted(nodes)
    for _ in range(20):
        leader = wait_for_leader_among(cluster, group, max_ticks)
        try:
            entry = cluster.propose(data, leader)
        except CatgaError:
            cluster.step()
            continue
        try:
            cluster.run_until(
                lambda: cluster.is_committed(entry, group) or cluster.lost(entry),  # noqa: B023
                max_ticks=max_ticks,
            )
        except TimeoutError:
            continue
        if not cluster.lost(entry):
            return entry
    raise AssertionError(f"could not commit {data!r} on {group} (seed {cluster.seed})")


def propose_many(cluster: SimulatedCluster, leader: str, data: list[bytes]) -> list[Entry]:
    """Propose every command in one tick, without letting time pass in between."""
    return [cluster.propose(d, leader) for d in data]


def assert_same_applied(cluster: SimulatedCluster, nodes: Iterable[str] | None = None) -> None:
    group = sorted(nodes if nodes is not None else cluster.nodes)
    lists = {n: cluster.applied(n) for n in group}
    first = lists[group[0]]
    for node, items in lists.items():
        assert items == first, f"{node} applied {items} but {group[0]} applied {first}"


def settle(cluster: SimulatedCluster, max_ticks: int = 100 * ELECTION) -> None:
    """Step until a leader leads and every live node applied everything it committed."""

    def converged() -> bool:
        leader = cluster.leader()
        if leader is None:
            return False
        target = cluster.core(leader).commit_index
        return all(cluster.core(n).applied_index == target for n in cluster.alive())

    cluster.run_until(converged, max_ticks=max_ticks)
    cluster.check_converged()


def reconnect(cluster: SimulatedCluster, down: set[str]) -> None:
    """Heal the network, then cut off again every node still in ``down``."""
    cluster.heal()
    for node in sorted(down):
        cluster.isolate(node)


def terms_and_leaders(cluster: SimulatedCluster) -> dict[int, set[str]]:
    by_term: dict[int, set[str]] = {}
    for node in cluster.leaders():
        by_term.setdefault(cluster.core(node).term, set()).add(node)
    return by_term


# ============================================================================================
# 2A: leader election (§5.2)


@pytest.mark.parametrize("seed", SEEDS)
def test_initial_election_elects_one_leader_within_a_few_timeouts(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)

    ticks = cluster.run_until(lambda: cluster.leader() is not None, max_ticks=5 * ELECTION)
    leader = cluster.wait_for_leader()

    assert ticks <= 5 * ELECTION
    assert cluster.leaders() == [leader]
    term = cluster.core(leader).term
    for node in cluster.nodes:
        assert cluster.core(node).term == term
        assert cluster.core(node).leader_id == leader


@pytest.mark.parametrize("seed", SEEDS)
def test_initial_election_no_spurious_election_in_a_quiet_period(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    term = cluster.core(leader).term

    for _ in range(100):
        cluster.step()
        # Not even a pre-vote (thesis §9.6): heartbeats keep every follower's timer reset.
        roles = {n: cluster.core(n).role for n in cluster.nodes}
        assert roles == {n: Role.LEADER if n == leader else Role.FOLLOWER for n in roles}

    assert all(cluster.core(n).term == term for n in cluster.nodes)


@pytest.mark.parametrize("seed", SEEDS)
def test_reelection_after_leader_isolation_and_loss_of_quorum(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader1 = cluster.wait_for_leader()

    # The leader is cut off: the other two elect a new one among themselves.
    cluster.isolate(leader1)
    rest = followers_of(cluster, leader1)
    leader2 = wait_for_leader_among(cluster, rest)
    assert leader2 != leader1
    term2 = cluster.core(leader2).term

    # The old leader rejoins: one leader, and (thanks to pre-vote, thesis §9.6) its lonely
    # campaigns did not raise its term, so it does not depose the new leader either.
    cluster.heal()
    cluster.run_until(lambda: cluster.leaders() == [leader2], max_ticks=10 * ELECTION)
    cluster.run(3 * ELECTION)
    assert cluster.leaders() == [leader2]
    assert cluster.core(leader2).term == term2
    assert cluster.core(leader1).term == term2

    # Two of three cut off: nobody can gather a majority, so no leader survives.
    other = next(n for n in cluster.nodes if n != leader2)
    cluster.isolate(leader2)
    cluster.isolate(other)
    cluster.run(2 * ELECTION)  # check-quorum (thesis §6.2) deposes the stranded leader
    for _ in range(20 * ELECTION):
        cluster.step()
        assert cluster.leaders() == []

    # Heal: a majority again, and a leader again.
    cluster.heal()
    leader3 = cluster.wait_for_leader()
    assert cluster.leaders() == [leader3]


@pytest.mark.parametrize("seed", SEEDS)
def test_no_leader_without_a_quorum_of_live_nodes(seed: int) -> None:
    cluster = SimulatedCluster(5, seed=seed)
    cluster.wait_for_leader()
    ids = sorted(cluster.nodes)
    crashed = random.Random(seed).sample(ids, 3)

    for node in crashed:
        cluster.crash(node)
    cluster.run(2 * ELECTION)  # check-quorum (thesis §6.2) deposes a surviving leader
    for _ in range(30 * ELECTION):
        cluster.step()
        assert cluster.leaders() == []

    cluster.restart(crashed[0])
    leader = cluster.wait_for_leader()
    assert leader not in crashed[1:]
    assert cluster.leaders() == [leader]


@pytest.mark.parametrize("seed", SEEDS)
def test_many_elections_with_random_disconnections(seed: int) -> None:
    cluster = SimulatedCluster(7, seed=seed)
    rng = random.Random(seed)
    ids = sorted(cluster.nodes)
    leaders_of_term: dict[int, set[str]] = {}

    def record() -> None:
        for term, nodes in terms_and_leaders(cluster).items():
            leaders_of_term.setdefault(term, set()).update(nodes)

    cluster.wait_for_leader()
    for _ in range(10):
        cut = rng.sample(ids, 3)
        for node in cut:
            cluster.isolate(node)
        connected = [n for n in ids if n not in cut]

        # Four of seven still hear each other: that majority elects one leader, and keeps it.
        def one_leader_among_connected() -> bool:
            record()
            return len(leaders_among(cluster, connected)) == 1  # noqa: B023

        cluster.run_until(one_leader_among_connected, max_ticks=50 * ELECTION)
        leader = leaders_among(cluster, connected)[0]
        for _ in range(2 * ELECTION):
            cluster.step()
            record()
        assert leaders_among(cluster, connected) == [leader]

        cluster.heal()
        for _ in range(ELECTION):
            cluster.step()
            record()

    cluster.wait_for_leader()
    assert all(len(nodes) == 1 for nodes in leaders_of_term.values()), leaders_of_term


# ============================================================================================
# 2B: log replication (§5.3, §5.4)


@pytest.mark.parametrize("seed", SEEDS)
def test_basic_agreement_every_node_applies_each_command_at_the_same_index(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    cluster.wait_for_leader()

    entries = [cluster.commit(f"cmd-{k}".encode()) for k in range(3)]

    assert [e.index for e in entries] == sorted({e.index for e in entries})
    for node in cluster.nodes:
        assert cluster.applied(node) == [b"cmd-0", b"cmd-1", b"cmd-2"]
        for entry in entries:
            assert cluster.core(node).log.entry(entry.index) == entry


@pytest.mark.parametrize("seed", SEEDS)
def test_agreement_despite_a_failed_follower(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    cluster.commit(b"101")

    # One follower is cut off: the remaining majority still commits and applies.
    lagging = followers_of(cluster, leader)[0]
    cluster.isolate(lagging)
    majority = [n for n in cluster.nodes if n != lagging]
    for data in (b"102", b"103", b"104"):
        commit_on(cluster, data, majority)
    assert cluster.applied(lagging) == [b"101"]
    assert_same_applied(cluster, majority)

    # It rejoins and catches up on everything it missed.
    cluster.heal()
    cluster.commit(b"105")
    settle(cluster)
    assert_same_applied(cluster)
    assert cluster.applied(lagging) == [b"101", b"102", b"103", b"104", b"105"]


@pytest.mark.parametrize("seed", SEEDS)
def test_no_agreement_without_a_majority(seed: int) -> None:
    cluster = SimulatedCluster(5, seed=seed)
    leader = cluster.wait_for_leader()
    cluster.commit(b"before")

    # Three of four followers are cut off: the leader's proposal cannot commit.
    cut = followers_of(cluster, leader)[:3]
    for node in cut:
        cluster.isolate(node)
    entry = cluster.propose(b"orphan", leader)
    cluster.run(30 * ELECTION)
    for node in cluster.nodes:
        assert cluster.core(node).commit_index < entry.index
        assert cluster.applied(node) == [b"before"]

    # Heal: the cluster recovers; the proposal either commits or is overwritten, everywhere.
    cluster.heal()
    cluster.commit(b"after")
    settle(cluster)
    assert_same_applied(cluster)
    applied = cluster.applied(leader)
    assert applied in ([b"before", b"orphan", b"after"], [b"before", b"after"])
    assert cluster.is_committed(entry) or cluster.lost(entry)


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_proposals_in_one_tick_all_commit_in_order(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    commands = [f"c{k}".encode() for k in range(20)]

    entries = propose_many(cluster, leader, commands)
    cluster.run_until(lambda: all(cluster.is_committed(e) for e in entries), max_ticks=ELECTION)

    assert [e.index for e in entries] == list(range(entries[0].index, entries[0].index + 20))
    assert {e.term for e in entries} == {cluster.core(leader).term}
    for node in cluster.nodes:
        assert cluster.applied(node) == commands


@pytest.mark.parametrize("seed", SEEDS)
def test_rejoin_of_a_partitioned_leader_discards_its_uncommitted_entries(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    cluster.wait_for_leader()
    cluster.commit(b"101")

    # The leader is cut off and takes proposals it can never commit.
    leader1 = cluster.wait_for_leader()
    cluster.isolate(leader1)
    stale = propose_many(cluster, leader1, [b"stale-102", b"stale-103", b"stale-104"])

    # The others elect a leader and commit 103.
    rest = followers_of(cluster, leader1)
    commit_on(cluster, b"103", rest)
    assert cluster.core(leader1).commit_index < stale[0].index

    # The new leader is cut off in turn, and the old one rejoins the remaining node.
    leader2 = wait_for_leader_among(cluster, rest)
    third = next(n for n in rest if n != leader2)
    cluster.heal()
    cluster.isolate(leader2)
    commit_on(cluster, b"104", [leader1, third])

    # Everyone together: one more, and every log converges on the committed history.
    cluster.heal()
    cluster.commit(b"105")
    settle(cluster)
    assert_same_applied(cluster)
    assert cluster.applied(leader1) == [b"101", b"103", b"104", b"105"]
    assert all(cluster.lost(e) for e in stale)


@pytest.mark.parametrize("seed", SEEDS)
def test_backup_of_divergent_logs_takes_few_rejections(seed: int) -> None:
    """6.824 TestBackup2B: a leader must back up over long divergent tails quickly (§5.3)."""
    cluster = RecordingCluster(5, seed=seed)
    rng = random.Random(seed)
    cluster.commit(b"first")
    divergent = 0

    # The leader and one follower are cut off with 50 proposals that never commit.
    leader1 = cluster.wait_for_leader()
    partner = rng.choice(followers_of(cluster, leader1))
    others = [n for n in sorted(cluster.nodes) if n not in (leader1, partner)]
    cluster.split([leader1, partner], others)
    lost = propose_many(cluster, leader1, [f"lost-a-{k}".encode() for k in range(50)])
    cluster.run(ELECTION)
    divergent += 2 * 50

    # The other three elect a leader and commit 50 of their own.
    leader2 = wait_for_leader_among(cluster, others)
    batch = propose_many(cluster, leader2, [f"ok-a-{k}".encode() for k in range(50)])
    cluster.run_until(lambda: all(cluster.is_committed(e, others) for e in batch))

    # Of those three, the leader and one follower are cut off with 50 more that never commit.
    loner = rng.choice([n for n in others if n != leader2])
    cluster.heal()
    cluster.split([leader1, partner], [loner], [n for n in others if n != loner])
    lost += propose_many(cluster, leader2, [f"lost-b-{k}".encode() for k in range(50)])
    cluster.run(ELECTION)
    divergent += 2 * 50

    # The original pair comes back with the loner: a majority that commits 50 more.
    pair_and_loner = [leader1, partner, loner]
    cluster.heal()
    cluster.split(pair_and_loner, [n for n in others if n != loner])
    leader3 = wait_for_leader_among(cluster, pair_and_loner)
    assert leader3 == loner  # §5.4.1: only its log holds the committed "ok-a" entries
    batch = propose_many(cluster, leader3, [f"ok-b-{k}".encode() for k in range(50)])
    cluster.run_until(lambda: all(cluster.is_committed(e, pair_and_loner) for e in batch))

    # Everyone together.
    cluster.heal()
    cluster.commit(b"last")
    settle(cluster)
    assert_same_applied(cluster)
    assert all(cluster.lost(e) for e in lost)
    applied = cluster.applied(leader1)
    assert [d for d in applied if d.startswith(b"lost")] == []
    assert len(applied) == 1 + 50 + 50 + 1

    # Four followers had to back up over 200 divergent entries in all: a few rejections each
    # (the fast back-up of §5.3 skips a whole term per round trip), not one per entry.
    rejections = cluster.log_mismatch_rejections()
    assert rejections <= 3 * 4 < divergent // 10, (rejections, divergent)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_rpc_counts_stay_small(seed: int) -> None:
    """6.824 TestCount2B: an election and an agreement cost a bounded number of messages."""
    cluster = RecordingCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    followers = 2

    # An election is a pre-vote round and a vote round (thesis §9.6), plus the no-op (§8).
    assert cluster.count(VoteRequest) <= 2 * 2 * followers, cluster.sent

    # Each command costs one AppendEntries per follower, and one more announcing the commit.
    before = cluster.count(AppendEntries)
    entries = propose_many(cluster, leader, [f"x{k}".encode() for k in range(10)])
    cluster.run_until(lambda: all(cluster.is_committed(e) for e in entries))
    assert cluster.count(AppendEntries) - before <= 2 * followers * len(entries)


# ============================================================================================
# 2C: persistence (Figure 2 "persistent state"), Figure 8 and churn


@pytest.mark.parametrize("seed", SEEDS)
def test_committed_entries_survive_restarting_each_node_in_turn(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    cluster.commit(b"11")
    expected = [b"11"]

    for round_, node in enumerate(sorted(cluster.nodes)):
        cluster.crash(node)
        cluster.restart(node)
        cluster.flush()
        # Restarted from its disk: it re-applies its committed log before hearing anyone.
        assert cluster.applied(node) == expected
        data = f"{12 + round_}".encode()
        cluster.commit(data)
        expected.append(data)

    settle(cluster)
    for node in cluster.nodes:
        assert cluster.applied(node) == expected


@pytest.mark.parametrize("seed", SEEDS)
def test_committed_entries_survive_restarting_every_node_at_once(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    for k in range(5):
        cluster.commit(f"v{k}".encode())
    before = {n: cluster.applied(n) for n in cluster.nodes}
    terms = {n: cluster.core(n).term for n in cluster.nodes}

    for node in sorted(cluster.nodes):
        cluster.crash(node)
    for node in sorted(cluster.nodes):
        cluster.restart(node)
    cluster.flush()

    for node in cluster.nodes:
        assert cluster.applied(node) == before[node]
        assert cluster.core(node).term == terms[node]
    cluster.commit(b"after")
    settle(cluster)
    for node in cluster.nodes:
        assert cluster.applied(node) == [f"v{k}".encode() for k in range(5)] + [b"after"]


@pytest.mark.parametrize("seed", SEEDS)
def test_persistence_with_leader_and_follower_crashing_repeatedly(seed: int) -> None:
    """6.824 TestPersist22C: the leader and a follower crash while the rest commit."""
    cluster = SimulatedCluster(5, seed=seed)
    rng = random.Random(seed)
    expected: list[bytes] = []
    for k in range(5):
        data = f"p{k}".encode()
        cluster.commit(data)
        expected.append(data)

        leader = cluster.wait_for_leader()
        down = [leader, rng.choice(followers_of(cluster, leader))]
        for node in down:
            cluster.crash(node)
        data = f"q{k}".encode()
        cluster.commit(data)
        expected.append(data)

        for node in down:
            cluster.restart(node)
    cluster.commit(b"end")
    expected.append(b"end")
    settle(cluster)
    for node in cluster.nodes:
        assert cluster.applied(node) == expected


def _figure_8_until_an_old_entry_sits_on_a_majority(seed: int) -> tuple[SimulatedCluster, Entry]:
    """Paper Figure 8 (a)–(c), built with partitions and one-tick links: an entry X of an old
    term sits on a majority while the leader's own no-op does not. Returns the cluster then.

    With one entry per AppendEntries and every message taking exactly one tick, the stages
    cannot blur into each other.
    """
    cluster = SimulatedCluster(5, seed=seed, max_entries_bytes=1)
    cluster.commit(b"base")
    cluster.set_faults(delay=(1, 1))

    # (a) S1 leads and replicates X to S2 only, then crashes.
    s1 = cluster.wait_for_leader()
    s2, *others = followers_of(cluster, s1)
    cluster.split([s1, s2], others)
    x = cluster.propose(b"x", s1)
    cluster.run_until(lambda: cluster.core(s2).log.last_index >= x.index)
    cluster.crash(s1)

    # (b) The other three elect S5; its no-op lands at X's index in a later term, and never
    # leaves it: S5 is cut off the moment it wins (its messages are still in flight), then dies.
    s5 = wait_for_leader_among(cluster, others)
    cluster.isolate(s5)
    cluster.crash(s5)
    cluster.run(2)
    s5_last = cluster.nodes[s5].disk.entries[-1]
    assert s5_last.index == x.index and s5_last.term > x.term

    # (c) S1 restarts; S1 or S2 (only they hold X) leads a later term and replicates X.
    cluster.heal()
    cluster.restart(s1)
    s3 = wait_for_leader_among(cluster, [n for n in cluster.nodes if n != s5])
    assert s3 in (s1, s2)
    leader = cluster.core(s3)

    def x_on_a_majority_but_not_the_noop() -> bool:
        matches = sorted((p.match for p in leader.progress.values()), reverse=True)
        return leader.role is Role.LEADER and matches[2] == x.index

    cluster.run_until(x_on_a_majority_but_not_the_noop, max_ticks=5 * ELECTION)
    return cluster, x


def _figure_8_s5_takes_over(cluster: SimulatedCluster, x: Entry) -> str:
    """Paper Figure 8 (d): the nodes holding the new leader's no-op crash; S5 comes back and,
    with the votes of the nodes holding only X, wins and overwrites X."""
    s5 = next(n for n in cluster.nodes if n not in cluster.alive())
    with_noop = [n for n in cluster.alive() if cluster.core(n).log.last_index > x.index]
    x_only = [n for n in cluster.alive() if n not in with_noop]
    for node in with_noop:
        cluster.crash(node)
    for node in x_only:
        cluster.isolate(node)  # drop the no-op still in flight to them
    cluster.run(2)
    cluster.heal()
    cluster.restart(s5)
    assert wait_for_leader_among(cluster, [s5, *x_only]) == s5
    return s5


@pytest.mark.parametrize("seed", SEEDS)
def test_figure_8_an_old_term_entry_on_a_majority_is_not_committed(seed: int) -> None:
    """§5.4.2: a leader never commits an entry of an earlier term by counting replicas."""
    cluster, x = _figure_8_until_an_old_entry_sits_on_a_majority(seed)

    assert all(cluster.core(n).commit_index < x.index for n in cluster.alive())

    # S5 takes over and overwrites X, which is safe exactly because X was never committed.
    s5 = _figure_8_s5_takes_over(cluster, x)
    cluster.set_faults()
    for node in sorted(cluster.nodes):
        if node not in cluster.alive():
            cluster.restart(node)
    cluster.commit(b"end")
    settle(cluster)
    assert cluster.lost(x)
    assert_same_applied(cluster)
    assert cluster.applied(s5) == [b"base", b"end"]


def test_figure_8_the_checker_catches_a_leader_that_counts_old_term_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prove the story has teeth: a core that skips the §5.4.2 term check commits X, and
    S5 overwriting it is reported by the simulator."""
    from catga_sync.raft.log import RaftLog

    def commit_by_counting(self: RaftLog, index: int, term: int) -> bool:
        if index > self.committed and self.term(index) is not None:
            self.commit_to(index)
            return True
        return False

    monkeypatch.setattr(RaftLog, "maybe_commit", commit_by_counting)
    cluster, x = _figure_8_until_an_old_entry_sits_on_a_majority(seed=0)
    assert any(cluster.core(n).commit_index >= x.index for n in cluster.alive())
    with pytest.raises(InvariantViolation, match=r"leader completeness|committed"):
        _figure_8_s5_takes_over(cluster, x)


def _ensure_quorum_up(
    cluster: SimulatedCluster, rng: random.Random, down: set[str], *, crash: bool
) -> None:
    """Bring random failed nodes back until at least three of five are up."""
    while len(cluster.nodes) - len(down) < 3:
        node = rng.choice(sorted(down))
        down.discard(node)
        if crash:
            cluster.restart(node)
        else:
            reconnect(cluster, down)


FIGURE_8_SETUPS = {
    "fast-disk": {},
    "slow-disk": {"ready_lag": 0.2},
    "plain-raft": {"pre_vote": False, "check_quorum": False},
}


@pytest.mark.parametrize("setup", FIGURE_8_SETUPS)
@pytest.mark.parametrize("seed", SEEDS)
def test_figure_8_leaders_crash_at_random_and_committed_entries_survive(
    seed: int, setup: str
) -> None:
    """6.824 TestFigure82C: crash leaders at random with short and long pauses (§5.4.2).

    With a slow disk, a crash also loses whatever the node had not yet persisted; plain Raft
    runs without pre-vote and check-quorum (the lab's configuration).
    """
    cluster = SimulatedCluster(5, seed=seed, **FIGURE_8_SETUPS[setup])  # type: ignore[arg-type]
    rng = random.Random(seed)
    down: set[str] = set()
    cluster.commit(b"start")

    for k in range(150):
        leader = cluster.leader()
        if leader is not None:
            with suppress(CatgaError):
                cluster.propose(f"f{k}".encode(), leader)
        cluster.run(rng.randint(0, 2) if rng.random() < 0.9 else rng.randint(0, 3 * ELECTION))
        leader = cluster.leader()
        if leader is not None and rng.random() < 0.5:
            cluster.crash(leader)
            down.add(leader)
        _ensure_quorum_up(cluster, rng, down, crash=True)

    for node in sorted(down):
        cluster.restart(node)
    cluster.ready_lag = 0.0
    cluster.commit(b"end")
    settle(cluster)
    assert_same_applied(cluster)
    assert cluster.applied("n0")[0] == b"start"
    assert cluster.applied("n0")[-1] == b"end"


@pytest.mark.parametrize("seed", SEEDS)
def test_figure_8_unreliable_with_partitions_and_lossy_links(seed: int) -> None:
    """6.824 TestFigure8Unreliable2C: lossy, duplicating, reordering links; partitions."""
    cluster = SimulatedCluster(5, seed=seed)
    rng = random.Random(seed)
    cluster.commit(b"start")
    cluster.set_faults(drop=0.1, duplicate=0.05, delay=(0, 5))
    down: set[str] = set()

    for k in range(150):
        leader = cluster.leader()
        if leader is not None and leader not in down:
            with suppress(CatgaError):
                cluster.propose(f"u{k}".encode(), leader)
        cluster.run(rng.randint(0, 2) if rng.random() < 0.9 else rng.randint(0, 3 * ELECTION))
        leader = cluster.leader()
        if leader is not None and leader not in down and rng.random() < 0.5:
            down.add(leader)
            cluster.isolate(leader)
        _ensure_quorum_up(cluster, rng, down, crash=False)

    cluster.heal()
    cluster.set_faults()
    cluster.commit(b"end")
    settle(cluster)
    assert_same_applied(cluster)
    assert cluster.applied("n0")[-1] == b"end"


@pytest.mark.parametrize("seed", SEEDS)
def test_unreliable_churn_converges_once_healed(seed: int) -> None:
    """6.824 TestUnreliableChurn2C: crash, restart and isolate at random while commands flow."""
    cluster = SimulatedCluster(5, seed=seed)
    rng = random.Random(seed)
    ids = sorted(cluster.nodes)
    cluster.set_faults(drop=0.1, duplicate=0.05, delay=(0, 3))
    proposed = 0

    for _ in range(150):
        leader = cluster.leader()
        if leader is not None and rng.random() < 0.5:
            try:
                cluster.propose(f"churn-{proposed}".encode(), leader)
                proposed += 1
            except CatgaError:
                pass
        roll = rng.random()
        node = rng.choice(ids)
        if roll < 0.1 and node in cluster.alive():
            cluster.crash(node)
        elif roll < 0.3 and node not in cluster.alive():
            cluster.restart(node)
        elif roll < 0.4:
            cluster.isolate(node)
        elif roll < 0.5:
            cluster.heal()
        cluster.run(rng.randint(1, 5))

    cluster.heal()
    cluster.set_faults()
    for node in ids:
        if node not in cluster.alive():
            cluster.restart(node)
    cluster.commit(b"final")
    settle(cluster)
    cluster.check_converged()
    assert_same_applied(cluster)
    assert cluster.applied(ids[0])[-1] == b"final"


# ============================================================================================
# 2D: log compaction and InstallSnapshot (§7)


def _lag_behind_a_compacted_leader(cluster: RecordingCluster, entries: int) -> tuple[str, str, int]:
    """Cut a follower off, commit ``entries`` without it and compact the leader's log."""
    leader = cluster.wait_for_leader()
    cluster.commit(b"seen-by-all")
    lagging = followers_of(cluster, leader)[0]
    cluster.isolate(lagging)
    majority = [n for n in cluster.nodes if n != lagging]
    batch = propose_many(cluster, leader, [f"s{k}".encode() for k in range(entries)])
    cluster.run_until(lambda: all(cluster.is_committed(e, majority) for e in batch))
    snapshot = cluster.compact(leader)
    assert cluster.core(leader).log.offset == snapshot.meta.index >= batch[-1].index
    return leader, lagging, snapshot.meta.index


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_brings_a_lagging_follower_up_to_date(seed: int) -> None:
    cluster = RecordingCluster(3, seed=seed)
    _, lagging, snapshot_index = _lag_behind_a_compacted_leader(cluster, 100)
    assert cluster.core(lagging).log.offset == 0

    cluster.heal()
    cluster.commit(b"after-snapshot")
    settle(cluster)

    assert cluster.count(InstallSnapshot, to=lagging) > 0
    assert cluster.core(lagging).log.offset >= snapshot_index
    assert_same_applied(cluster)
    assert len(cluster.applied(lagging)) == 1 + 100 + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_in_small_chunks_over_a_lossy_reordering_link(seed: int) -> None:
    cluster = RecordingCluster(3, seed=seed, snapshot_chunk_bytes=16)
    leader, lagging, snapshot_index = _lag_behind_a_compacted_leader(cluster, 30)
    size = len(cluster.core(leader).log.snapshot.data)  # type: ignore[union-attr]

    cluster.set_faults(drop=0.1, duplicate=0.1, delay=(0, 3))
    cluster.heal()
    settle(cluster, max_ticks=400 * ELECTION)
    cluster.set_faults()
    cluster.commit(b"after-snapshot")
    settle(cluster)

    assert cluster.count(InstallSnapshot, to=lagging) >= size // 16
    assert cluster.core(lagging).log.offset >= snapshot_index
    assert_same_applied(cluster)


@pytest.mark.parametrize("seed", SEEDS)
def test_restart_from_snapshot_plus_log_tail(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    expected = []
    for k in range(10):
        expected.append(f"a{k}".encode())
        cluster.commit(expected[-1])
    for node in sorted(cluster.nodes):
        cluster.compact(node)
    for k in range(5):
        expected.append(f"b{k}".encode())
        cluster.commit(expected[-1])
    offsets = {n: cluster.core(n).log.offset for n in cluster.nodes}
    assert all(offset > 0 for offset in offsets.values())

    for node in sorted(cluster.nodes):
        cluster.crash(node)
    for node in sorted(cluster.nodes):
        cluster.restart(node)
    cluster.flush()

    # The state machine comes back from the snapshot, then the committed tail is re-applied.
    for node in cluster.nodes:
        assert cluster.core(node).log.offset == offsets[node]
        assert cluster.applied(node) == expected
    cluster.commit(b"more")
    settle(cluster)
    for node in cluster.nodes:
        assert cluster.applied(node) == [*expected, b"more"]


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_compacts_again_while_a_follower_is_midway_through_a_snapshot(seed: int) -> None:
    cluster = RecordingCluster(3, seed=seed, snapshot_chunk_bytes=16)
    leader, lagging, first_index = _lag_behind_a_compacted_leader(cluster, 30)

    # The follower rejoins and starts receiving the snapshot, one chunk per tick.
    cluster.set_faults(delay=(1, 1))
    cluster.heal()
    cluster.run_until(
        lambda: (
            sum(
                1
                for m in cluster.sent
                if isinstance(m, InstallSnapshot) and m.to == lagging and m.offset > 0
            )
            >= 3
        ),
        max_ticks=10 * ELECTION,
    )
    assert cluster.core(lagging).log.offset < first_index

    # Midway, the leader commits more and compacts again.
    majority = [n for n in cluster.nodes if n != lagging]
    batch = propose_many(cluster, leader, [f"t{k}".encode() for k in range(10)])
    cluster.run_until(lambda: all(cluster.is_committed(e, majority) for e in batch))
    second = cluster.compact(leader)
    assert second.meta.index > first_index
    assert cluster.core(lagging).log.offset < first_index
    cluster.set_faults()

    settle(cluster, max_ticks=200 * ELECTION)
    cluster.commit(b"after")
    settle(cluster)
    assert_same_applied(cluster)
    assert len(cluster.applied(lagging)) == 1 + 30 + 10 + 1
    # The leader abandoned the stale transfer and sent the newer snapshot instead.
    sent = {m.meta.index for m in cluster.sent if isinstance(m, InstallSnapshot)}
    assert sent == {first_index, second.meta.index}
    assert cluster.core(lagging).log.offset == second.meta.index


@pytest.mark.parametrize("seed", SEEDS)
def test_repeated_crash_of_every_node_between_compactions(seed: int) -> None:
    """6.824 TestSnapshotAllCrash2D: compact, crash everyone, restart, and carry on."""
    cluster = SimulatedCluster(3, seed=seed)
    rng = random.Random(seed)
    expected: list[bytes] = []
    for round_ in range(5):
        for k in range(rng.randint(1, 8)):
            expected.append(f"r{round_}-{k}".encode())
            cluster.commit(expected[-1])
        for node in sorted(cluster.nodes):
            if rng.random() < 0.7:
                cluster.compact(node)

        for node in sorted(cluster.nodes):
            cluster.crash(node)
        for node in sorted(cluster.nodes):
            cluster.restart(node)
        cluster.flush()

        for node in cluster.nodes:
            assert cluster.applied(node) == expected
    cluster.commit(b"end")
    settle(cluster)
    for node in cluster.nodes:
        assert cluster.applied(node) == [*expected, b"end"]


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_compacted_followers_and_leader_keep_committing(seed: int) -> None:
    """Compaction on every node, again and again, while the cluster keeps working."""
    cluster = SimulatedCluster(3, seed=seed)
    expected = []
    for k in range(30):
        expected.append(f"k{k}".encode())
        cluster.commit(expected[-1])
        if k % 7 == 6:
            for node in sorted(cluster.nodes):
                cluster.compact(node)
    settle(cluster)
    for node in cluster.nodes:
        assert cluster.applied(node) == expected


# ============================================================================================
# The simulator itself


def _short_story(seed: int) -> SimulatedCluster:
    cluster = SimulatedCluster(5, seed=seed, trace=1000)
    cluster.set_faults(drop=0.05, duplicate=0.05, delay=(0, 3))
    cluster.commit(b"one")
    leader = cluster.wait_for_leader()
    cluster.isolate(leader)
    cluster.run(3 * ELECTION)
    cluster.heal()
    cluster.crash(followers_of(cluster, leader)[0])
    cluster.commit(b"two")
    return cluster


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_the_same_seed_replays_the_same_trace(seed: int) -> None:
    first, second = _short_story(seed), _short_story(seed)

    assert first.trace(1000) == second.trace(1000)
    assert first.now == second.now
    assert (first.delivered, first.dropped) == (second.delivered, second.dropped)


def test_asking_for_the_leader_before_any_election_is_a_no_leader_error() -> None:
    cluster = SimulatedCluster(3)  # t=0: nobody has timed out yet

    with pytest.raises(NoLeaderError, match="no leader to propose to at t=0") as caught:
        cluster.propose(b"x")
    assert isinstance(caught.value, CatgaError)
    with pytest.raises(NoLeaderError, match=r"^no leader$"):
        cluster.transfer_leadership("n1")
    with pytest.raises(NoLeaderError, match=r"^no leader$"):
        cluster.change_membership(ConfigChangeType.ADD_LEARNER, "n3")


def test_different_seeds_give_different_schedules() -> None:
    traces = {_short_story(seed).trace(1000) for seed in range(4)}
    assert len(traces) > 1


def test_split_blocks_exactly_the_links_between_groups() -> None:
    cluster = SimulatedCluster(5)

    cluster.split(["n0", "n1"], ["n2", "n3"])

    groups = {"n0": 0, "n1": 0, "n2": 1, "n3": 1, "n4": 2}  # n4, unlisted, is a group alone
    for a in cluster.nodes:
        for b in cluster.nodes:
            if a != b:
                assert cluster.connected(a, b) == (groups[a] == groups[b]), (a, b)


def test_one_way_blocks_only_one_direction() -> None:
    cluster = SimulatedCluster(3)

    cluster.one_way("n0", "n1")

    assert not cluster.connected("n0", "n1")
    assert cluster.connected("n1", "n0")
    assert all(
        cluster.connected(a, b)
        for a in cluster.nodes
        for b in cluster.nodes
        if a != b and (a, b) != ("n0", "n1")
    )


def test_bridge_lets_the_middle_node_hear_both_sides() -> None:
    cluster = SimulatedCluster(5)

    cluster.bridge(["n0", "n1"], ["n3", "n4"], via="n2")

    for a in ("n0", "n1"):
        for b in ("n3", "n4"):
            assert not cluster.connected(a, b) and not cluster.connected(b, a)
    for other in ("n0", "n1", "n3", "n4"):
        assert cluster.connected("n2", other) and cluster.connected(other, "n2")
    assert cluster.connected("n0", "n1") and cluster.connected("n3", "n4")


def test_isolate_and_heal() -> None:
    cluster = SimulatedCluster(3)

    cluster.isolate("n1")
    assert not any(cluster.connected("n1", n) or cluster.connected(n, "n1") for n in ("n0", "n2"))
    assert cluster.connected("n0", "n2") and cluster.connected("n2", "n0")

    cluster.heal()
    assert all(cluster.connected(a, b) for a in cluster.nodes for b in cluster.nodes)


def test_a_campaign_overtaken_by_a_later_term_on_a_slow_disk_is_no_violation() -> None:
    """Figure 2: term and vote are persisted before the node answers anyone. Here a slow disk
    batches a node's own campaign in term T with a vote it then grants in term T+1: the Ready
    persists (T+1, vote) and still carries the term-T VoteRequest. Sending it is harmless, since
    the node is past term T for good and ignores any term-T answer."""
    cluster = SimulatedCluster(3, seed=0, pre_vote=False)
    leader = cluster.wait_for_leader()
    node, other = followers_of(cluster, leader)
    cluster.isolate(node)
    cluster.ready_lag = 1.0  # the disk stalls: every Ready waits for flush()
    for _ in range(1000):  # not run_until: its flush() would un-stall the disk
        if cluster.core(node).role is Role.CANDIDATE:
            break
        cluster.step()
    assert cluster.core(node).role is Role.CANDIDATE, "it never campaigned"
    core = cluster.core(node)
    term = core.term
    core.step(VoteRequest(term + 1, other, node, core.log.last_index, core.log.last_term))

    cluster.flush()

    assert (core.hard_state.term, core.hard_state.vote) == (term + 1, other)


def test_a_vote_overtaken_by_a_later_term_on_a_slow_disk_is_no_violation() -> None:
    """The same with the default configuration: a node outside any leader's lease grants a
    vote in term T, then one in term T+1, before its disk catches up. It persists (T+1, vote)
    and sends both grants; it can never vote again in term T, so nothing is unsafe."""
    cluster = SimulatedCluster(3, seed=0)
    leader = cluster.wait_for_leader()
    node, candidate = followers_of(cluster, leader)
    cluster.isolate(node)
    cluster.run_until(lambda: cluster.core(node).role is Role.PRE_CANDIDATE)  # lease over
    cluster.ready_lag = 1.0
    core = cluster.core(node)
    term, last = core.term, (core.log.last_index, core.log.last_term)
    core.step(VoteRequest(term + 1, candidate, node, *last))
    core.step(VoteRequest(term + 2, leader, node, *last))

    cluster.flush()

    assert (core.hard_state.term, core.hard_state.vote) == (term + 2, leader)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_cut_link_delivers_nothing(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    follower = followers_of(cluster, leader)[0]
    cluster.one_way(leader, follower)
    dropped = cluster.dropped

    cluster.run(ELECTION // 2)

    assert cluster.dropped > dropped
    assert cluster.core(follower).election_elapsed >= ELECTION // 2


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_leader_bridging_two_halves_keeps_everyone_in_agreement(seed: int) -> None:
    cluster = SimulatedCluster(5, seed=seed)
    leader = cluster.wait_for_leader()
    others = followers_of(cluster, leader)

    cluster.bridge(others[:2], others[2:], via=leader)
    for k in range(3):
        cluster.commit(f"b{k}".encode())
    cluster.run(5 * ELECTION)

    assert cluster.leaders() == [leader]
    assert_same_applied(cluster)
    assert cluster.applied(leader) == [b"b0", b"b1", b"b2"]
