"""Linearizable reads without writing to the log: the read-index protocol of thesis §6.4.

The leader records its commit index as the read index, confirms it is still leader with a round
of heartbeats acknowledged by a majority, and only then hands back a :class:`ReadState`; the
read is served once the state machine has applied that index. A new leader first commits its
no-op, since before that it does not know the commit index. A follower forwards the request to
the leader and gets the leader's read index back.
"""

from __future__ import annotations

import random

import pytest
from helpers.core import drain_reads, elect

from catga_sync.errors import NoLeaderError
from catga_sync.raft import (
    AppendResponse,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Membership,
    Message,
    PersistedState,
    RaftConfig,
    RaftCore,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Role,
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


def _contexts(cluster: SimulatedCluster, node: str) -> list[str]:
    return [state.context for state in cluster.read_states(node)]


# -- one core, driven by hand ----------------------------------------------------------------------


def _new_leader_a() -> RaftCore:
    """Node a, just elected leader of {a, b, c} in term 1; its no-op (index 1) not yet acked."""
    return elect(RaftCore(RaftConfig("a", Membership(frozenset("abc"))), rng=random.Random(0)))


def _leader_a() -> RaftCore:
    """Node a, leader of term 1 with its no-op committed (acknowledged by b)."""
    core = _new_leader_a()
    core.step(AppendResponse(core.term, "b", "a", index=1))
    drain_reads(core)
    assert core.commit_index == 1
    return core


def _round_tokens(sent: list[Message]) -> list[str]:
    """The tokens of the read-index rounds whose heartbeats are in ``sent``, oldest first.

    A round's heartbeats carry a token of the leader's own, not the caller's read context."""
    tokens = [m.context for m in sent if isinstance(m, Heartbeat) and m.context]
    return list(dict.fromkeys(tokens))


def _round_token(sent: list[Message]) -> str:
    """The token of the newest read-index round in ``sent``; there must be one."""
    tokens = _round_tokens(sent)
    assert tokens, "no read-index heartbeat was sent"
    return tokens[-1]


def _read_heartbeats(sent: list[Message]) -> list[Heartbeat]:
    """The heartbeats of the newest read-index round in ``sent`` (none if there was no round)."""
    tokens = _round_tokens(sent)
    if not tokens:
        return []
    return [m for m in sent if isinstance(m, Heartbeat) and m.context == tokens[-1]]


# -- on the leader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_answers_after_a_heartbeat_round_with_the_commit_index(seed: int) -> None:
    cluster, leader, _ = _settled(seed)
    commit = cluster.core(leader).commit_index

    cluster.read_index(leader, "r1")
    assert cluster.read_states(leader) == [], "not before a majority confirmed the leadership"
    cluster.step()

    assert cluster.read_states(leader) == [ReadState("r1", commit)]


def test_leader_sends_a_heartbeat_round_and_counts_a_majority() -> None:
    leader = _leader_a()

    leader.read_index("r1")
    sent, reads = drain_reads(leader)
    (token,) = _round_tokens(sent)
    assert {m.to for m in _read_heartbeats(sent)} == {"b", "c"}
    assert reads == []

    leader.step(HeartbeatResponse(1, "c", "a", token))
    assert drain_reads(leader)[1] == [ReadState("r1", 1)]
    leader.step(HeartbeatResponse(1, "b", "a", token))
    assert drain_reads(leader)[1] == [], "answered once"


def test_plain_heartbeat_responses_do_not_confirm_a_read() -> None:
    leader = _leader_a()
    leader.read_index("r1")
    drain_reads(leader)

    leader.step(HeartbeatResponse(1, "b", "a", ""))
    leader.step(AppendResponse(1, "c", "a", index=1))

    assert drain_reads(leader)[1] == []


def test_learner_acknowledgements_do_not_confirm_a_read() -> None:
    config = RaftConfig("a", Membership(frozenset("abc"), frozenset("d")))
    leader = elect(RaftCore(config, rng=random.Random(0)))
    leader.step(AppendResponse(1, "b", "a", index=1))
    drain_reads(leader)
    leader.read_index("r1")
    sent = drain_reads(leader)[0]
    token = _round_token(sent)
    assert "d" in {m.to for m in _read_heartbeats(sent)}

    leader.step(HeartbeatResponse(1, "d", "a", token))
    assert drain_reads(leader)[1] == [], "a (voter) + d (learner) is not a majority of voters"
    leader.step(HeartbeatResponse(1, "c", "a", token))

    assert drain_reads(leader)[1] == [ReadState("r1", 1)]


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_with_one_follower_cut_off_still_answers(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.isolate(followers[0])

    cluster.read_index(leader, "r1")
    cluster.run(2)

    assert _contexts(cluster, leader) == ["r1"]


@pytest.mark.parametrize("seed", SEEDS)
def test_isolated_leader_never_answers_and_steps_down(seed: int) -> None:
    cluster, leader, _ = _settled(seed)
    cluster.isolate(leader)

    cluster.read_index(leader, "stale?")
    cluster.run_until(
        lambda: cluster.core(leader).role is not Role.LEADER, max_ticks=2 * ELECTION_TICKS
    )
    cluster.heal()
    cluster.commit(b"after healing")
    cluster.run(2 * ELECTION_TICKS)

    assert cluster.read_states(leader) == []


def test_new_leader_answers_only_once_its_no_op_commits() -> None:
    """a restarts with index 2 of term 1 uncommitted in its log (the old leader may have
    committed it); its read index must not be below it, so it queues the read until its no-op
    (index 3) commits, and only then starts the heartbeat round."""
    persisted = PersistedState(HardState(1, None, 1), None, (Entry(1, 1), Entry(2, 1, b"x")))
    config = RaftConfig("a", Membership(frozenset("abc")))
    leader = elect(RaftCore(config, rng=random.Random(0), persisted=persisted))
    assert (leader.term, leader.commit_index, leader.log.last_index) == (2, 1, 3)

    leader.read_index("r1")
    assert _read_heartbeats(drain_reads(leader)[0]) == []
    leader.step(AppendResponse(2, "b", "a", index=3))
    sent = drain_reads(leader)[0]
    assert {m.to for m in _read_heartbeats(sent)} == {"b", "c"}
    leader.step(HeartbeatResponse(2, "c", "a", _round_token(sent)))

    assert drain_reads(leader)[1] == [ReadState("r1", 3)]


def test_reads_are_dropped_when_the_leader_steps_down() -> None:
    leader = _leader_a()
    leader.read_index("r1")
    token = _round_token(drain_reads(leader)[0])

    leader.step(Heartbeat(2, "b", "a", commit=1))  # b leads term 2 now
    leader.step(HeartbeatResponse(2, "c", "a", token))

    assert leader.role is Role.FOLLOWER
    assert drain_reads(leader)[1] == []


def test_single_voter_answers_at_once() -> None:
    cluster = SimulatedCluster(1, seed=1)
    entry = cluster.commit(b"alone")

    cluster.read_index("n0", "r1")

    assert cluster.read_states("n0") == [ReadState("r1", entry.index)]


# -- batching --------------------------------------------------------------------------------------


def test_one_confirmation_answers_every_earlier_read() -> None:
    leader = _leader_a()
    for context in ("r1", "r2", "r3"):
        leader.read_index(context)
    _, _, third = _round_tokens(drain_reads(leader)[0])

    leader.step(HeartbeatResponse(1, "b", "a", third))

    assert drain_reads(leader)[1] == [ReadState("r1", 1), ReadState("r2", 1), ReadState("r3", 1)]


def test_a_confirmation_does_not_answer_later_reads() -> None:
    leader = _leader_a()
    leader.read_index("r1")
    leader.propose(b"x")
    leader.read_index("r2")
    first, second = _round_tokens(drain_reads(leader)[0])

    leader.step(HeartbeatResponse(1, "b", "a", first))
    assert drain_reads(leader)[1] == [ReadState("r1", 1)]
    leader.step(AppendResponse(1, "b", "a", index=2))
    drain_reads(leader)
    leader.step(HeartbeatResponse(1, "c", "a", second))

    assert drain_reads(leader)[1] == [ReadState("r2", 1)], "r2's index is the commit when it came"


@pytest.mark.parametrize("seed", SEEDS)
def test_several_reads_in_one_tick_are_answered_together(seed: int) -> None:
    cluster, leader, _ = _settled(seed)
    commit = cluster.core(leader).commit_index

    for k in range(5):
        cluster.read_index(leader, f"r{k}")
    cluster.step()

    assert cluster.read_states(leader) == [ReadState(f"r{k}", commit) for k in range(5)]


# -- contexts -------------------------------------------------------------------------------------


def test_an_acknowledgement_of_an_earlier_round_does_not_confirm_a_later_read() -> None:
    """Thesis §6.4 step 3: leadership is confirmed by heartbeats sent *after* the read index was
    recorded. Here "r" is reused once the first read completed (not in flight, so allowed by
    ``read_index``'s docstring); a duplicate of b's ack from the first round must not count, or a
    leader deposed in between would serve a stale read."""
    leader = _leader_a()
    leader.read_index("r")
    first_ack = HeartbeatResponse(1, "b", "a", _round_token(drain_reads(leader)[0]))
    leader.step(first_ack)
    assert drain_reads(leader)[1] == [ReadState("r", 1)]

    leader.read_index("r")
    second_round = _round_token(drain_reads(leader)[0])
    leader.step(first_ack)  # the network delivers the old ack a second time

    assert drain_reads(leader)[1] == [], "no ack of the new round has arrived yet"
    leader.step(HeartbeatResponse(1, "c", "a", second_round))
    assert drain_reads(leader)[1] == [ReadState("r", 1)], "an ack of the new round confirms it"


@pytest.mark.parametrize("context", ["r1", "1.2", "2.1"])
def test_an_ack_carrying_the_callers_context_confirms_nothing(context: str) -> None:
    """The round's heartbeats carry a token of the leader's own, never the caller's context, so
    an ack that echoes the caller's context (stale, forged, or a context shaped like a token of
    another round) does not confirm the read; only an ack of the round's token does."""
    leader = _leader_a()
    leader.read_index(context)
    sent = drain_reads(leader)[0]
    token = _round_token(sent)
    assert context not in {m.context for m in sent if isinstance(m, Heartbeat)}

    leader.step(HeartbeatResponse(1, "b", "a", context))
    leader.step(HeartbeatResponse(1, "c", "a", context))
    assert drain_reads(leader)[1] == [], "the caller's context is not a round token"
    leader.step(HeartbeatResponse(1, "c", "a", token))

    assert drain_reads(leader)[1] == [ReadState(context, 1)]


def test_reads_from_two_followers_with_the_same_context_are_both_answered() -> None:
    leader = _leader_a()
    leader.step(ReadIndexRequest(1, "b", "a", "1"))  # each follower numbers its own reads
    leader.step(ReadIndexRequest(1, "c", "a", "1"))
    tokens = _round_tokens(drain_reads(leader)[0])

    for token in tokens:  # b and c each acknowledge every heartbeat of both rounds
        leader.step(HeartbeatResponse(1, "b", "a", token))
        leader.step(HeartbeatResponse(1, "c", "a", token))
    answers = [m for m in drain_reads(leader)[0] if isinstance(m, ReadIndexResponse)]

    assert sorted(answers, key=lambda m: m.to) == [
        ReadIndexResponse(1, "a", "b", "1", 1),
        ReadIndexResponse(1, "a", "c", "1", 1),
    ]


# -- on a follower ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_follower_read_is_answered_with_the_leaders_commit_index(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    commit = cluster.core(leader).commit_index

    cluster.read_index(followers[0], "f1")
    cluster.run_until(lambda: bool(cluster.read_states(followers[0])), max_ticks=3)

    assert cluster.read_states(followers[0]) == [ReadState("f1", commit)]
    assert cluster.read_states(leader) == []


def test_follower_forwards_its_read_to_the_leader() -> None:
    follower = RaftCore(RaftConfig("b", Membership(frozenset("abc"))), rng=random.Random(0))
    follower.step(Heartbeat(1, "a", "b", commit=0))
    drain_reads(follower)

    follower.read_index("f1")
    sent, reads = drain_reads(follower)
    assert sent == [ReadIndexRequest(1, "b", "a", "f1")]
    assert reads == []

    follower.step(ReadIndexResponse(1, "a", "b", "f1", 7))
    assert drain_reads(follower)[1] == [ReadState("f1", 7)]


def test_leader_answers_a_forwarded_read_with_a_response_not_a_read_state() -> None:
    leader = _leader_a()

    leader.step(ReadIndexRequest(1, "b", "a", "f1"))
    leader.step(HeartbeatResponse(1, "c", "a", _round_token(drain_reads(leader)[0])))
    sent, reads = drain_reads(leader)

    assert reads == []
    assert ReadIndexResponse(1, "a", "b", "f1", 1) in sent


def test_read_index_with_no_known_leader_raises_no_leader() -> None:
    core = RaftCore(RaftConfig("b", Membership(frozenset("abc"))), rng=random.Random(0))

    with pytest.raises(NoLeaderError):
        core.read_index("r1")


@pytest.mark.parametrize("context", ["", None, 7])
def test_read_context_must_be_a_non_empty_string(context: object) -> None:
    leader = _leader_a()

    with pytest.raises(ValueError, match="non-empty string"):
        leader.read_index(context)  # type: ignore[arg-type]


# -- linearizability -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_a_committed_write_is_visible_to_every_later_read(seed: int) -> None:
    """Whatever was committed before read_index lies at or below the read index, on every
    node, so a node serving the read once it applied that index sees the write."""
    cluster, _, _ = _settled(seed)
    written = cluster.commit(b"the value")

    for node in sorted(cluster.nodes):
        cluster.read_index(node, f"after-{node}")
    cluster.run_until(lambda: all(cluster.read_states(n) for n in cluster.nodes), max_ticks=5)

    for node in sorted(cluster.nodes):
        (state,) = cluster.read_states(node)
        assert written.index <= state.index
        cluster.run_until(lambda: cluster.core(node).applied_index >= state.index)  # noqa: B023
        assert b"the value" in cluster.applied(node)


@pytest.mark.parametrize("seed", SEEDS)
def test_reads_after_a_leader_change_see_the_old_leaders_writes(seed: int) -> None:
    cluster, old, followers = _settled(seed)
    written = cluster.commit(b"written under the old leader")
    cluster.crash(old)
    new = cluster.wait_for_leader()

    cluster.read_index(new, "r1")  # asked before its no-op may have committed
    cluster.run_until(lambda: bool(cluster.read_states(new)), max_ticks=5)

    (state,) = cluster.read_states(new)
    assert state.index > written.index, "at least the new leader's no-op"
    assert cluster.core(new).log.term(state.index) == cluster.core(new).term
    assert new in followers
