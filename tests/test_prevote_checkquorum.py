"""Pre-vote (thesis §9.6), check-quorum (thesis §6.2) and the leader lease on votes (§4.2.3).

Together they keep a healthy leader in place: a node that was cut off and comes back does not
raise the cluster's term, a leader that cannot hear a majority gives up within an election
timeout, and a follower that hears a live leader does not help anyone depose it. Each scenario
runs on a few seeds of :class:`~catga_sync.testing.SimulatedCluster`; the vote-level rules are
checked on a single :class:`~catga_sync.raft.RaftCore` driven message by message.
"""

from __future__ import annotations

import random

import pytest
from helpers.core import drain, tick_until

from catga_sync.raft import (
    Heartbeat,
    Membership,
    Message,
    RaftConfig,
    RaftCore,
    Role,
    VoteRequest,
    VoteResponse,
)
from catga_sync.testing import SimulatedCluster

SEEDS = (1, 2, 3)
ELECTION_TICKS = 10


def _followers(cluster: SimulatedCluster, leader: str) -> list[str]:
    return sorted(n for n in cluster.nodes if n != leader)


def _watch_leadership(cluster: SimulatedCluster, ticks: int) -> set[tuple[str | None, int]]:
    """Step ``ticks`` times and collect every (leader, term) seen along the way."""
    seen: set[tuple[str | None, int]] = set()
    for _ in range(ticks):
        cluster.step()
        leader = cluster.leader()
        seen.add((leader, cluster.core(leader).term if leader else -1))
    return seen


def _core(node_id: str = "b", **options: bool) -> RaftCore:
    config = RaftConfig(node_id, Membership(frozenset({"a", "b", "c"})), **options)
    return RaftCore(config, rng=random.Random(0))


def _follower_of_a(**options: bool) -> RaftCore:
    """Node b, following leader a in term 1, having just heard a heartbeat."""
    core = _core("b", **options)
    core.step(Heartbeat(1, "a", "b", commit=0))
    drain(core)
    assert (core.role, core.leader_id, core.term) == (Role.FOLLOWER, "a", 1)
    return core


# -- §9.6: a rejoining node does not disrupt the cluster -------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_isolated_follower_only_pre_votes_and_keeps_its_term(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    cluster.commit(b"before the partition")
    follower = _followers(cluster, leader)[0]
    term = cluster.core(follower).term

    cluster.isolate(follower)
    roles = set()
    for _ in range(200):
        cluster.step()
        roles.add(cluster.core(follower).role)

    assert Role.PRE_CANDIDATE in roles, "it should have tried (and failed) to pre-vote"
    assert Role.CANDIDATE not in roles
    assert cluster.core(follower).term == term
    assert cluster.nodes[follower].disk.hard.term == term


@pytest.mark.parametrize("seed", SEEDS)
def test_rejoining_follower_does_not_raise_the_leaders_term(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    cluster.commit(b"before the partition")
    follower = _followers(cluster, leader)[0]
    term = cluster.core(leader).term

    cluster.isolate(follower)
    cluster.run(200)
    cluster.heal()
    seen = _watch_leadership(cluster, 100)

    assert seen == {(leader, term)}
    assert cluster.core(follower).role is Role.FOLLOWER
    assert cluster.core(follower).leader_id == leader
    assert cluster.core(follower).term == term
    entry = cluster.commit(b"after the partition")
    assert entry.term == term


@pytest.mark.parametrize("seed", SEEDS)
def test_without_pre_vote_a_rejoining_follower_raises_the_term(seed: int) -> None:
    """The control for the test above: the same scenario fails without the protection."""
    cluster = SimulatedCluster(3, seed=seed, pre_vote=False, check_quorum=False)
    leader = cluster.wait_for_leader()
    cluster.commit(b"before the partition")
    follower = _followers(cluster, leader)[0]
    term = cluster.core(leader).term

    cluster.isolate(follower)
    cluster.run(200)
    assert cluster.core(follower).term > term
    cluster.heal()
    cluster.run(100)

    assert cluster.core(leader).term > term


# -- §6.2: check-quorum ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", [0, 3, 7])
def test_leader_cut_off_from_the_majority_steps_down_within_two_election_timeouts(
    seed: int, offset: int
) -> None:
    cluster = SimulatedCluster(3, seed=seed, election_ticks=ELECTION_TICKS)
    leader = cluster.wait_for_leader()
    cluster.run(offset)  # isolate at various points of the leader's check-quorum cycle

    cluster.isolate(leader)
    ticks = cluster.run_until(lambda: cluster.core(leader).role is not Role.LEADER)

    assert ticks <= 2 * ELECTION_TICKS
    assert cluster.core(leader).role is Role.FOLLOWER
    assert cluster.core(leader).leader_id is None


@pytest.mark.parametrize("seed", SEEDS)
def test_without_check_quorum_an_isolated_leader_keeps_leading(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed, check_quorum=False)
    leader = cluster.wait_for_leader()
    term = cluster.core(leader).term

    cluster.isolate(leader)
    cluster.run(20 * ELECTION_TICKS)

    assert cluster.core(leader).role is Role.LEADER
    assert cluster.core(leader).term == term


@pytest.mark.parametrize("seed", SEEDS)
def test_check_quorum_frees_a_candidate_stuck_at_a_higher_term(seed: int) -> None:
    """etcd's TestFreeStuckCandidateWithCheckQuorum: without pre-vote an isolated node's term
    runs ahead; on rejoining, its answer to the leader's heartbeat carries that term, the leader
    steps down, and the cluster elects a leader the straggler follows."""
    cluster = SimulatedCluster(3, seed=seed, pre_vote=False, check_quorum=True)
    leader = cluster.wait_for_leader()
    cluster.commit(b"the straggler misses this")
    straggler = _followers(cluster, leader)[0]
    cluster.isolate(straggler)
    cluster.commit(b"and this")
    cluster.run(100)
    stuck_term = cluster.core(straggler).term
    assert stuck_term > cluster.core(leader).term

    cluster.heal()
    new_leader = cluster.wait_for_leader()
    cluster.run_until(lambda: cluster.core(straggler).leader_id == new_leader)

    assert new_leader != straggler, "its log is behind, so it cannot win (§5.4.1)"
    assert cluster.core(new_leader).term > stuck_term
    cluster.commit(b"after healing")
    cluster.check_converged()


# -- partial networks ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_bridge_topology_settles_on_a_stable_leader(seed: int) -> None:
    """Two halves that hear each other only through one node: no endless elections."""
    cluster = SimulatedCluster(5, seed=seed)
    leader = cluster.wait_for_leader()
    a, via, c, d = _followers(cluster, leader)
    cluster.bridge([leader, a], [c, d], via=via)
    cluster.run(300)
    settled = cluster.leader()
    assert settled is not None

    seen = _watch_leadership(cluster, 500)

    assert seen == {(settled, cluster.core(settled).term)}
    cluster.commit(b"through the bridge")


@pytest.mark.parametrize("seed", SEEDS)
def test_followers_deaf_to_the_leader_do_not_depose_it(seed: int) -> None:
    """One-way cuts: two followers of five cannot hear the leader (it hears them). They keep
    pre-voting, but the other followers and the leader are in their lease and ignore them."""
    cluster = SimulatedCluster(5, seed=seed)
    leader = cluster.wait_for_leader()
    term = cluster.core(leader).term
    deaf = _followers(cluster, leader)[:2]
    for node in deaf:
        cluster.one_way(leader, node)

    seen = _watch_leadership(cluster, 500)

    assert seen == {(leader, term)}
    assert all(cluster.core(n).term == term for n in cluster.nodes)
    cluster.commit(b"committed by the three that hear each other")


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_reaching_a_minority_is_replaced_by_a_stable_one(seed: int) -> None:
    """The leader loses both directions to three of its four followers (which still hear each
    other): check-quorum deposes it, and the new leader then holds for 500 ticks."""
    cluster = SimulatedCluster(5, seed=seed)
    old = cluster.wait_for_leader()
    old_term = cluster.core(old).term
    for node in _followers(cluster, old)[:3]:
        cluster.one_way(old, node)
        cluster.one_way(node, old)
    cluster.run(300)
    settled = cluster.leader()
    assert settled is not None and settled != old
    assert cluster.core(settled).term > old_term

    seen = _watch_leadership(cluster, 500)

    assert seen == {(settled, cluster.core(settled).term)}


# -- §4.2.3: the lease on votes, one core at a time ------------------------------------------------


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_in_its_lease_ignores_a_vote_request_of_a_higher_term(pre_vote: bool) -> None:
    core = _follower_of_a()

    core.step(VoteRequest(5, "c", "b", last_log_index=10, last_log_term=4, pre_vote=pre_vote))

    assert (core.role, core.term, core.leader_id, core.vote) == (Role.FOLLOWER, 1, "a", None)
    assert drain(core) == [], "not even a refusal: the request is simply dropped"


def test_follower_in_its_lease_helps_a_leadership_transfer() -> None:
    core = _follower_of_a()

    core.step(VoteRequest(2, "c", "b", last_log_index=0, last_log_term=0, transfer=True))

    assert (core.term, core.vote) == (2, "c")
    assert VoteResponse(2, "b", "c", granted=True) in drain(core)


def test_follower_votes_again_once_the_leader_is_silent_for_an_election_timeout() -> None:
    core = _follower_of_a()
    for _ in range(ELECTION_TICKS - 1):
        core.tick()  # below the randomized timeout, so b does not campaign itself
    assert core.role is Role.FOLLOWER
    core.step(VoteRequest(2, "c", "b", last_log_index=0, last_log_term=0))
    assert core.term == 1, "still one tick inside the lease"

    core.tick()
    core.step(VoteRequest(2, "c", "b", last_log_index=0, last_log_term=0))

    assert (core.term, core.vote) == (2, "c")
    assert VoteResponse(2, "b", "c", granted=True) in drain(core)


def test_without_check_quorum_there_is_no_lease() -> None:
    core = _follower_of_a(check_quorum=False)

    core.step(VoteRequest(2, "c", "b", last_log_index=0, last_log_term=0))

    assert (core.term, core.vote) == (2, "c")


def test_leader_ignores_a_vote_request_of_a_higher_term() -> None:
    core = _core("a")
    for _ in range(3 * ELECTION_TICKS):
        core.tick()
        for m in drain(core):
            if isinstance(m, VoteRequest):
                core.step(VoteResponse(m.term, m.to, "a", granted=True, pre_vote=m.pre_vote))
        if core.role is Role.LEADER:
            break
    assert core.role is Role.LEADER
    term = core.term

    core.step(VoteRequest(term + 3, "c", "a", last_log_index=99, last_log_term=term + 2))

    assert (core.role, core.term) == (Role.LEADER, term)


# -- §9.6: what a pre-vote does and does not change ------------------------------------------------


def test_pre_candidate_keeps_its_term_and_asks_for_the_next_one() -> None:
    core = _core("b")
    sent: list[Message] = []
    for _ in range(2 * ELECTION_TICKS):
        core.tick()
        sent.extend(drain(core))

    assert core.role is Role.PRE_CANDIDATE
    assert (core.term, core.vote) == (0, None)
    requests = [m for m in sent if isinstance(m, VoteRequest)]
    assert {m.to for m in requests} == {"a", "c"}
    assert all(m.pre_vote and m.term == 1 for m in requests)


def test_granting_a_pre_vote_changes_neither_term_nor_vote() -> None:
    core = _core("b")

    core.step(VoteRequest(1, "c", "b", last_log_index=0, last_log_term=0, pre_vote=True))

    assert (core.term, core.vote) == (0, None)
    assert drain(core) == [VoteResponse(1, "b", "c", granted=True, pre_vote=True)]


def test_pre_vote_majority_starts_a_real_election() -> None:
    core = _core("b")
    tick_until(core, lambda c: c.role is Role.PRE_CANDIDATE, "a pre-vote campaign")
    drain(core)

    core.step(VoteResponse(1, "a", "b", granted=True, pre_vote=True))

    assert (core.role, core.term, core.vote) == (Role.CANDIDATE, 1, "b")
    requests = [m for m in drain(core) if isinstance(m, VoteRequest)]
    assert {m.to for m in requests} == {"a", "c"}
    assert all(not m.pre_vote and m.term == 1 for m in requests)
