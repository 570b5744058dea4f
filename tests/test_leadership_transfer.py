"""Leadership transfer (thesis §3.10): hand leadership to a chosen voter without an outage.

The leader stops taking proposals, brings the target's log up to date, then sends it TimeoutNow;
the target campaigns at once (no pre-vote, and past the followers' lease). A transfer that does
not finish within an election timeout is abandoned and the leader carries on. Cluster-level
stories run on :class:`~catga_sync.testing.SimulatedCluster`; the message order is checked on one
:class:`~catga_sync.raft.RaftCore` driven by hand.
"""

from __future__ import annotations

import random

import pytest
from helpers.core import drain, elect

from catga_sync.errors import (
    LeadershipTransferError,
    NotLeaderError,
    ProposalDroppedError,
)
from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    ConfigChangeType,
    HeartbeatResponse,
    Membership,
    RaftConfig,
    RaftCore,
    Role,
    TimeoutNow,
    VoteRequest,
)
from catga_sync.testing import SimulatedCluster

SEEDS = (1, 2, 3)
ELECTION_TICKS = 10


def _settled(seed: int, nodes: int = 3) -> tuple[SimulatedCluster, str, list[str]]:
    """A cluster with a leader that has committed one command everywhere."""
    cluster = SimulatedCluster(nodes, seed=seed, election_ticks=ELECTION_TICKS)
    leader = cluster.wait_for_leader()
    cluster.commit(b"settled")
    return cluster, leader, sorted(n for n in cluster.nodes if n != leader)


# -- one core, driven by hand ----------------------------------------------------------------------


def _leader_a() -> RaftCore:
    """Node a, elected leader of {a, b, c} in term 1 with its no-op acknowledged by b only."""
    core = elect(RaftCore(RaftConfig("a", Membership(frozenset("abc"))), rng=random.Random(0)))
    core.step(AppendResponse(core.term, "b", "a", index=core.log.last_index))
    drain(core)
    assert core.commit_index == core.log.last_index == 1
    return core


# -- §3.10: the happy paths ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_an_up_to_date_follower_makes_it_leader_of_the_next_term(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    target = followers[0]
    term = cluster.core(leader).term

    cluster.transfer_leadership(target)
    ticks = cluster.run_until(lambda: cluster.leader() == target)

    assert ticks <= 3
    assert cluster.core(target).term == term + 1
    assert cluster.core(leader).role is Role.FOLLOWER
    assert cluster.leaders() == [target]
    entry = cluster.commit(b"on the new leader")
    assert entry.term == term + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_a_lagging_follower_catches_it_up_first(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    target = followers[0]
    term = cluster.core(leader).term
    cluster.isolate(target)
    entries = [cluster.commit(f"missed {k}".encode()) for k in range(30)]
    assert cluster.core(target).log.last_index < entries[-1].index

    cluster.heal()
    cluster.transfer_leadership(target, leader)
    cluster.run_until(lambda: cluster.leader() == target, max_ticks=ELECTION_TICKS)

    assert cluster.core(target).log.last_index > entries[-1].index  # it holds them all, + no-op
    assert cluster.core(target).term == term + 1, "one election, and no pre-vote term bumps"
    cluster.commit(b"after the transfer")
    assert cluster.applied(target)[-31:] == [e.data for e in entries] + [b"after the transfer"]


def test_leader_sends_timeout_now_only_once_the_target_has_its_whole_log() -> None:
    leader = _leader_a()
    leader.step(AppendResponse(leader.term, "c", "a", index=1))
    leader.propose_many([b"x", b"y"])
    sent = drain(leader)
    assert any(isinstance(m, AppendEntries) and m.to == "c" and m.entries for m in sent)

    leader.transfer_leadership("c")  # c has not acknowledged x and y yet
    assert not any(isinstance(m, TimeoutNow) for m in drain(leader))

    leader.step(AppendResponse(leader.term, "c", "a", index=leader.log.last_index - 1))
    assert not any(isinstance(m, TimeoutNow) for m in drain(leader))

    leader.step(AppendResponse(leader.term, "c", "a", index=leader.log.last_index))
    assert TimeoutNow(leader.term, "a", "c") in drain(leader)


def test_leader_sends_timeout_now_at_once_to_an_up_to_date_target() -> None:
    leader = _leader_a()

    leader.transfer_leadership("b")

    assert drain(leader) == [TimeoutNow(1, "a", "b")]
    assert leader.role is Role.LEADER, "it leads until it hears of the higher term"


def test_timeout_now_starts_a_real_election_that_bypasses_the_lease() -> None:
    core = RaftCore(RaftConfig("b", Membership(frozenset("abc"))), rng=random.Random(0))
    core.step(AppendEntries(1, "a", "b", 0, 0, (), 0))
    drain(core)

    core.step(TimeoutNow(1, "a", "b"))

    assert (core.role, core.term, core.vote) == (Role.CANDIDATE, 2, "b")
    requests = [m for m in drain(core) if isinstance(m, VoteRequest)]
    assert {m.to for m in requests} == {"a", "c"}
    assert all(m.transfer and not m.pre_vote and m.term == 2 for m in requests)


# -- §3.10: while a transfer is under way ----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_proposals_during_a_transfer_are_dropped(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.isolate(followers[0])  # keep the transfer pending

    cluster.transfer_leadership(followers[0])
    with pytest.raises(ProposalDroppedError) as caught:
        cluster.propose(b"too late", leader)

    assert type(caught.value) is ProposalDroppedError, "the leader is still the leader"
    assert followers[0] in str(caught.value)
    with pytest.raises(ProposalDroppedError):
        cluster.change_membership(ConfigChangeType.REMOVE, followers[1])
    assert cluster.core(leader).role is Role.LEADER


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_an_unreachable_target_aborts_after_an_election_timeout(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    term = cluster.core(leader).term
    cluster.isolate(followers[0])

    cluster.transfer_leadership(followers[0])
    ticks = cluster.run_until(lambda: cluster.core(leader).lead_transferee is None)

    assert ticks <= ELECTION_TICKS
    assert (cluster.core(leader).role, cluster.core(leader).term) == (Role.LEADER, term)
    entry = cluster.propose(b"accepted again", leader)
    cluster.run_until(lambda: cluster.is_committed(entry, [leader, followers[1]]))


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_the_current_target_again_is_a_no_op(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.isolate(followers[0])
    cluster.transfer_leadership(followers[0])
    cluster.run(ELECTION_TICKS - 2)

    cluster.transfer_leadership(followers[0])  # does not restart the abort clock
    cluster.run(2)

    assert cluster.core(leader).lead_transferee is None


@pytest.mark.parametrize("seed", SEEDS)
def test_a_new_target_replaces_a_pending_transfer(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.isolate(followers[0])
    cluster.transfer_leadership(followers[0])
    cluster.step()

    cluster.transfer_leadership(followers[1], leader)
    cluster.run_until(lambda: cluster.leader() == followers[1], max_ticks=5)


# -- misuse ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_an_unknown_node_is_refused(seed: int) -> None:
    cluster, leader, _ = _settled(seed)

    with pytest.raises(LeadershipTransferError, match="'n9'"):
        cluster.transfer_leadership("n9")

    assert cluster.core(leader).lead_transferee is None
    cluster.propose(b"still accepted", leader)


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_a_learner_is_refused(seed: int) -> None:
    cluster, leader, _ = _settled(seed)
    cluster.add_node("n3")
    entry = cluster.change_membership(ConfigChangeType.ADD_LEARNER, "n3")
    cluster.run_until(lambda: cluster.is_committed(entry))

    with pytest.raises(LeadershipTransferError, match="not a voting member"):
        cluster.transfer_leadership("n3")

    assert cluster.core(leader).lead_transferee is None


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_itself_is_a_no_op(seed: int) -> None:
    cluster, leader, _ = _settled(seed)
    term = cluster.core(leader).term

    cluster.transfer_leadership(leader)
    cluster.run(3 * ELECTION_TICKS)

    assert cluster.leader() == leader
    assert cluster.core(leader).term == term
    assert cluster.core(leader).lead_transferee is None
    cluster.commit(b"still leading")


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_on_a_follower_raises_not_leader_naming_the_leader(seed: int) -> None:
    cluster, leader, followers = _settled(seed)

    with pytest.raises(NotLeaderError) as caught:
        cluster.transfer_leadership(followers[1], followers[0])

    assert caught.value.leader_id == leader


# -- choosing a target -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_most_up_to_date_voter_is_the_follower_that_kept_up(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    behind, ahead = followers
    cluster.isolate(behind)
    cluster.commit(b"only the leader and one follower have this")

    assert cluster.core(leader).most_up_to_date_voter() == ahead


def test_most_up_to_date_voter_from_the_leaders_progress() -> None:
    leader = _leader_a()  # b acknowledged the no-op, c did not
    assert leader.most_up_to_date_voter() == "b"

    leader.propose(b"x")
    drain(leader)
    leader.step(AppendResponse(leader.term, "c", "a", index=leader.log.last_index))

    assert leader.most_up_to_date_voter() == "c"


@pytest.mark.parametrize("seed", SEEDS)
def test_most_up_to_date_voter_is_none_on_a_follower_or_a_lone_leader(seed: int) -> None:
    cluster, _, followers = _settled(seed)
    alone = SimulatedCluster(1, seed=seed)
    leader = alone.wait_for_leader()

    assert cluster.core(followers[0]).most_up_to_date_voter() is None
    assert alone.core(leader).most_up_to_date_voter() is None


@pytest.mark.parametrize("seed", SEEDS)
def test_most_up_to_date_voter_ignores_learners(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.add_node("n3")
    entry = cluster.change_membership(ConfigChangeType.ADD_LEARNER, "n3")
    cluster.run_until(lambda: cluster.is_committed(entry))
    for node in cluster.nodes:
        if node not in (leader, "n3"):
            cluster.isolate(node)
    # Only the learner keeps up now; the voters fall behind, yet a learner is never chosen.
    cluster.propose(b"only the learner gets this", leader)
    cluster.run(2)
    core = cluster.core(leader)
    assert core.progress["n3"].match > max(core.progress[n].match for n in followers)

    assert core.most_up_to_date_voter() in followers


def test_a_lost_timeout_now_is_sent_again_on_the_targets_next_heartbeat_response() -> None:
    leader = _leader_a()
    leader.transfer_leadership("b")  # b is caught up: TimeoutNow goes out at once
    first = [m for m in drain(leader) if isinstance(m, TimeoutNow)]
    assert [m.to for m in first] == ["b"]
    # That message is lost. b answers the next heartbeat: the leader asks again.
    leader.step(HeartbeatResponse(leader.term, "b", "a"))
    again = [m for m in drain(leader) if isinstance(m, TimeoutNow)]
    assert [m.to for m in again] == ["b"]
    # A heartbeat response from another follower does not trigger it.
    leader.step(HeartbeatResponse(leader.term, "c", "a"))
    assert not [m for m in drain(leader) if isinstance(m, TimeoutNow)]
