"""The events of ``Ready.events`` (:mod:`catga_sync.raft.events`): what the core reports for
people to read, and that it reports nothing in a steady state.

Vote-level events are checked on one :class:`~catga_sync.raft.RaftCore` driven message by
message; transfers, removals, membership changes and snapshots on a
:class:`~catga_sync.testing.SimulatedCluster`, whose nodes record every event they produce.
"""

from __future__ import annotations

import random

import pytest
from helpers.core import tick_until

from catga_sync.raft import (
    AppendResponse,
    CampaignStarted,
    ConfigChange,
    ConfigChangeApplied,
    ConfigChangeType,
    ElectionLost,
    ElectionWon,
    Heartbeat,
    HeartbeatResponse,
    LeaderSeen,
    Membership,
    Message,
    RaftConfig,
    RaftCore,
    RaftEvent,
    Role,
    SnapshotInstalled,
    SnapshotSent,
    SnapshotTaken,
    StepDownReason,
    SteppedDown,
    TimeoutNow,
    VoteCast,
    VoteRefusal,
    VoteRequest,
    VoteResponse,
)
from catga_sync.testing import SimulatedCluster

SEEDS = (1, 2, 3)


def _core(node_id: str = "a", **options: bool) -> RaftCore:
    config = RaftConfig(node_id, Membership(frozenset({"a", "b", "c"})), **options)
    return RaftCore(config, rng=random.Random(0))


def _drain(core: RaftCore) -> tuple[list[Message], list[RaftEvent]]:
    """Play the driver; return what the Readies send and report."""
    sent: list[Message] = []
    events: list[RaftEvent] = []
    while core.has_ready():
        ready = core.ready()
        sent.extend(ready.early_messages)
        sent.extend(ready.messages)
        events.extend(ready.events)
        core.advance(ready)
    return sent, events


def _events(core: RaftCore) -> list[RaftEvent]:
    return _drain(core)[1]


def _leader_a() -> RaftCore:
    """Node a, leader of term 1 with the votes of a and b, everything drained."""
    a = _core("a")
    tick_until(a, lambda c: c.role is Role.PRE_CANDIDATE, "a pre-vote")
    _drain(a)
    a.step(VoteResponse(1, "b", "a", granted=True, pre_vote=True))
    _drain(a)
    a.step(VoteResponse(1, "b", "a", granted=True))
    _drain(a)
    assert a.role is Role.LEADER
    return a


def _of(events: list[RaftEvent], kind: type) -> list[RaftEvent]:
    return [e for e in events if isinstance(e, kind)]


# -- elections -------------------------------------------------------------------------------


def test_a_campaign_reports_the_pre_vote_the_vote_and_the_win_with_its_voters() -> None:
    a = _core("a")
    tick_until(a, lambda c: c.role is Role.PRE_CANDIDATE, "a pre-vote")
    assert _events(a) == [CampaignStarted(1, pre_vote=True, asking=("b", "c"))]

    a.step(VoteResponse(1, "c", "a", granted=True, pre_vote=True))
    assert _events(a) == [CampaignStarted(1, pre_vote=False, asking=("b", "c"))]

    a.step(VoteResponse(1, "c", "a", granted=True))
    assert _events(a) == [ElectionWon(1, votes_from=("a", "c"))]
    assert a.role is Role.LEADER


def test_without_pre_vote_the_campaign_is_a_candidate_at_once() -> None:
    a = _core("a", pre_vote=False)
    tick_until(a, lambda c: c.role is Role.CANDIDATE, "a campaign")
    assert _events(a) == [CampaignStarted(1, pre_vote=False, asking=("b", "c"))]


def test_a_single_voter_campaigns_and_wins_in_one_ready() -> None:
    alone = RaftCore(RaftConfig("a", Membership(frozenset({"a"}))), rng=random.Random(0))
    tick_until(alone, lambda c: c.role is Role.LEADER, "a lone leader")
    assert _events(alone) == [
        CampaignStarted(1, pre_vote=True, asking=()),
        CampaignStarted(1, pre_vote=False, asking=()),
        ElectionWon(1, votes_from=("a",)),
    ]


def test_a_pre_vote_refused_by_a_majority_is_reported_lost_with_who_refused() -> None:
    a = _core("a")
    tick_until(a, lambda c: c.role is Role.PRE_CANDIDATE, "a pre-vote")
    _drain(a)
    a.step(VoteResponse(0, "b", "a", granted=False, pre_vote=True))
    a.step(VoteResponse(0, "c", "a", granted=False, pre_vote=True))
    assert _events(a) == [ElectionLost(1, pre_vote=True, refused_by=("b", "c"))]
    assert a.role is Role.FOLLOWER


def test_a_leadership_transfer_campaign_names_the_old_leader() -> None:
    b = _core("b")
    b.step(Heartbeat(1, "a", "b", commit=0))
    _drain(b)
    b.step(TimeoutNow(1, "a", "b"))
    assert _events(b) == [CampaignStarted(2, pre_vote=False, asking=("a", "c"), transfer_from="a")]


# -- leaders seen, once ----------------------------------------------------------------------


def test_a_follower_reports_its_leader_once_not_per_heartbeat() -> None:
    b = _core("b")
    b.step(Heartbeat(1, "a", "b", commit=0))
    assert _events(b) == [LeaderSeen("a", 1)]
    for _ in range(50):
        b.tick()
        b.step(Heartbeat(1, "a", "b", commit=0))
        while b.has_ready():
            ready = b.ready()
            assert ready.events == ()
            b.advance(ready)


def test_a_steady_leader_reports_nothing_over_many_heartbeats() -> None:
    a = _leader_a()
    for _ in range(100):
        a.tick()
        sent, events = _drain(a)
        assert events == []
        for m in sent:
            if isinstance(m, Heartbeat):
                a.step(HeartbeatResponse(1, m.to, "a", m.context))
        assert _events(a) == []
    assert a.role is Role.LEADER


def test_a_new_leader_of_a_new_term_is_seen_again() -> None:
    b = _core("b")
    b.step(Heartbeat(1, "a", "b", commit=0))
    _drain(b)
    b.step(Heartbeat(2, "c", "b", commit=0))
    assert _events(b) == [LeaderSeen("c", 2)]


# -- stepping down, for each reason ----------------------------------------------------------


def test_a_leader_deposed_by_a_higher_term_says_by_whom() -> None:
    a = _leader_a()
    a.step(AppendResponse(5, "c", "a", index=0, reject=True))
    assert _events(a) == [SteppedDown(1, StepDownReason.HIGHER_TERM, "c", new_term=5)]
    assert a.role is Role.FOLLOWER


def test_a_leader_that_hears_no_majority_steps_down_for_check_quorum() -> None:
    a = _leader_a()
    tick_until(a, lambda c: c.role is Role.FOLLOWER, "check-quorum")
    stepped = _of(_events(a), SteppedDown)
    assert stepped == [
        SteppedDown(1, StepDownReason.CHECK_QUORUM, None, new_term=1, heard_from=("a",))
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_leader_that_hands_over_steps_down_for_the_transfer(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    old = cluster.wait_for_leader()
    target = next(n for n in sorted(cluster.nodes) if n != old)
    term = cluster.core(old).term
    cluster.commit(b"x")
    cluster.transfer_leadership(target)
    cluster.run_until(lambda: cluster.leader() == target)

    stepped = _of(cluster.nodes[old].events, SteppedDown)
    assert stepped[-1] == SteppedDown(term, StepDownReason.TRANSFER, target, new_term=term + 1)
    campaigns = _of(cluster.nodes[target].events, CampaignStarted)
    asking = tuple(sorted(set(cluster.nodes) - {target}))
    assert campaigns[-1] == CampaignStarted(term + 1, False, asking, transfer_from=old)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_leader_removed_from_the_membership_steps_down_for_it(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    old = cluster.wait_for_leader()
    cluster.commit(b"x")
    cluster.change_membership(ConfigChangeType.REMOVE, old)
    cluster.run_until(lambda: cluster.leader() not in (None, old))

    stepped = _of(cluster.nodes[old].events, SteppedDown)
    assert len(stepped) == 1
    assert stepped[0].reason is StepDownReason.REMOVED
    assert stepped[0].from_node in set(cluster.nodes) - {old}  # the successor it woke


# -- membership and snapshots -----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_a_committed_membership_change_is_reported_once_by_every_member(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    cluster.wait_for_leader()
    cluster.commit(b"x")
    cluster.add_node("n3")
    entry = cluster.change_membership(ConfigChangeType.ADD_LEARNER, "n3")
    cluster.run_until(lambda: cluster.is_committed(entry))
    cluster.run(20)

    expected = ConfigChangeApplied(
        entry.index,
        ConfigChange(ConfigChangeType.ADD_LEARNER, "n3"),
        Membership(frozenset({"n0", "n1", "n2"}), frozenset({"n3"})),
    )
    for node in ("n0", "n1", "n2", "n3"):
        assert _of(cluster.nodes[node].events, ConfigChangeApplied) == [expected], node


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshots_taken_sent_and_installed_are_reported(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    lagging = next(n for n in sorted(cluster.nodes) if n != leader)
    cluster.isolate(lagging)
    for k in range(20):
        cluster.commit(f"c{k}".encode())
    snapshot = cluster.compact(leader)
    size = len(snapshot.data)
    cluster.heal()
    cluster.run_until(lambda: cluster.core(lagging).applied_index >= snapshot.meta.index)

    leader_events = cluster.nodes[leader].events
    index, term = snapshot.meta.index, snapshot.meta.term
    assert _of(leader_events, SnapshotTaken) == [SnapshotTaken(index, term, size)]
    assert SnapshotSent(lagging, index, size) in _of(leader_events, SnapshotSent)
    installed = _of(cluster.nodes[lagging].events, SnapshotInstalled)
    assert installed == [SnapshotInstalled(index, term, size, leader)]


# -- votes (DEBUG lines) ---------------------------------------------------------------------


def test_votes_granted_and_refused_are_reported_with_the_reason() -> None:
    b = _core("b")
    b.step(VoteRequest(1, "a", "b", 0, 0))
    assert _events(b) == [VoteCast("a", 1, pre_vote=False, granted=True)]
    b.step(VoteRequest(1, "c", "b", 0, 0))
    assert _events(b) == [VoteCast("c", 1, False, False, VoteRefusal.VOTED, "a")]


def test_a_vote_request_inside_the_leader_lease_is_reported_ignored() -> None:
    b = _core("b")
    b.step(Heartbeat(1, "a", "b", commit=0))
    _drain(b)
    b.step(VoteRequest(2, "c", "b", 0, 0, pre_vote=True))
    assert _events(b) == [VoteCast("c", 2, True, False, VoteRefusal.LEADER_LEASE, "a")]


def test_a_vote_for_a_log_behind_ours_is_refused_for_that() -> None:
    a = _leader_a()  # its log holds the no-op of term 1
    a.step(AppendResponse(2, "c", "a", index=0, reject=True))  # deposed: term 2, no leader
    _drain(a)
    a.step(VoteRequest(3, "c", "a", 0, 0))
    votes = _of(_events(a), VoteCast)
    assert votes == [VoteCast("c", 3, False, False, VoteRefusal.LOG_BEHIND)]
