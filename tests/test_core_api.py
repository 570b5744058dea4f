"""The core's driver surface: what it refuses, and the contract of each Ready.

A driver calls ``tick``, ``step``, ``propose`` and friends, then handles a Ready in order —
persist, send, apply — and hands it back with ``advance``. These tests pin the misuse the core
must refuse without changing its state, the fields a driver relies on, and restarting from what a
storage hands back (:class:`PersistedState`).
"""

from __future__ import annotations

import hashlib
import random

import pytest
from helpers.core import drain, elect

from catga_sync.errors import InvalidMessageError, NoLeaderError, NotLeaderError
from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    ConfigChange,
    ConfigChangeType,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    PersistedState,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
)
from catga_sync.raft.codec import encode_config_entry
from catga_sync.testing import SimulatedCluster

SEEDS = (1, 2, 3)
ABC = Membership(frozenset("abc"))


def _core(
    node_id: str = "b", persisted: PersistedState | None = None, applied: int = 0
) -> RaftCore:
    config = RaftConfig(node_id, ABC, applied=applied)
    return RaftCore(config, rng=random.Random(0), persisted=persisted)


def _leader_a() -> RaftCore:
    """Node a, leader of {a, b, c} in term 1, both followers acknowledged its no-op."""
    core = elect(_core("a"))
    for follower in ("b", "c"):
        core.step(AppendResponse(1, follower, "a", index=1))
    drain(core)
    return core


def _follower_b() -> RaftCore:
    """Node b, following a in term 1, with entries 1 (no-op) and 2 committed and applied."""
    core = _core("b")
    core.step(AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1), Entry(2, 1, b"x")), commit=2))
    drain(core)
    return core


def _state(core: RaftCore) -> tuple[object, ...]:
    """Everything a refused call must leave alone."""
    return (
        core.hard_state,
        core.soft_state,
        tuple(core.log.entries),
        core.commit_index,
        core.applied_index,
        core.membership,
        core.has_ready(),
    )


# -- proposals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_propose_on_a_follower_names_the_leader(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed)
    leader = cluster.wait_for_leader()
    cluster.commit(b"settled")
    follower = next(n for n in sorted(cluster.nodes) if n != leader)

    with pytest.raises(NotLeaderError) as caught:
        cluster.propose(b"x", follower)

    assert type(caught.value) is NotLeaderError
    assert caught.value.leader_id == leader
    assert str(caught.value) == f"This node is not the leader. Leader: {leader}"


def test_propose_with_no_known_leader_raises_no_leader() -> None:
    core = _core()

    with pytest.raises(NoLeaderError) as caught:
        core.propose(b"x")

    assert caught.value.leader_id is None
    assert str(caught.value) == "This node is not the leader. Leader: none"


@pytest.mark.parametrize("data", ["text", bytearray(b"x"), None, 1])
def test_propose_refuses_anything_but_bytes(data: object) -> None:
    leader = _leader_a()
    before = _state(leader)

    with pytest.raises(TypeError, match="must be bytes"):
        leader.propose(data)  # type: ignore[arg-type]

    assert _state(leader) == before


def test_propose_many_refuses_the_whole_batch_for_one_bad_item() -> None:
    leader = _leader_a()
    before = _state(leader)

    with pytest.raises(TypeError):
        leader.propose_many([b"fine", "not bytes", b"fine too"])  # type: ignore[list-item]

    assert _state(leader) == before


def test_propose_many_appends_consecutive_entries_in_one_message_per_follower() -> None:
    leader = _leader_a()
    last = leader.log.last_index

    entries = leader.propose_many([b"x", b"y", b"z"])

    assert [(e.index, e.term, e.data) for e in entries] == [
        (last + 1, 1, b"x"),
        (last + 2, 1, b"y"),
        (last + 3, 1, b"z"),
    ]
    appends = [m for m in drain(leader) if isinstance(m, AppendEntries)]
    assert sorted(m.to for m in appends) == ["b", "c"]
    assert all(m.entries == tuple(entries) for m in appends)


# -- messages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        AppendEntries(5, "a", "c", 0, 0, (Entry(1, 5),), commit=1),  # addressed to c
        VoteRequest(5, "b", "b", 9, 5),  # from itself
        AppendEntries(5, "a", "b", 2, 1, (Entry(4, 5),), commit=4),  # gap after prev_index
        AppendEntries(5, "a", "b", 2, 1, (Entry(3, 6),), commit=3),  # entry from a later term
    ],
    ids=["to-another-node", "from-itself", "entries-not-consecutive", "entry-term-too-high"],
)
def test_invalid_messages_are_refused_and_change_nothing(message: Message) -> None:
    core = _follower_b()
    before = _state(core)

    with pytest.raises(InvalidMessageError):
        core.step(message)

    assert _state(core) == before
    assert core.term == 1


# -- the Ready handshake ---------------------------------------------------------------------------


def test_step_between_ready_and_advance_is_refused() -> None:
    core = _follower_b()
    core.tick()
    ready = core.ready()

    with pytest.raises(RuntimeError, match="between ready"):
        core.step(Heartbeat(1, "a", "b", commit=2))
    core.advance(ready)
    core.step(Heartbeat(1, "a", "b", commit=2))


def test_propose_between_ready_and_advance_is_refused() -> None:
    leader = _leader_a()
    leader.tick()
    ready = leader.ready()

    with pytest.raises(RuntimeError, match="between ready"):
        leader.propose(b"x")
    with pytest.raises(RuntimeError, match="between ready"):
        leader.propose_config_change(ConfigChange(ConfigChangeType.REMOVE, "c"))
    leader.advance(ready)
    leader.propose(b"x")


def test_tick_between_ready_and_advance_is_refused() -> None:
    core = _follower_b()
    core.tick()
    core.ready()

    with pytest.raises(RuntimeError, match="between ready"):
        core.tick()


def test_advance_with_another_ready_is_refused() -> None:
    core = _follower_b()
    core.tick()
    ready = core.ready()
    forged = Ready(
        hard_state=ready.hard_state,
        soft_state=ready.soft_state,
        entries=ready.entries,
        snapshot=ready.snapshot,
        apply_snapshot=ready.apply_snapshot,
        committed_entries=ready.committed_entries,
        messages=ready.messages,
        early_messages=ready.early_messages,
        read_states=ready.read_states,
        membership=ready.membership,
        events=ready.events,
    )

    with pytest.raises(ValueError, match="the Ready returned by the last ready"):
        core.advance(forged)
    core.advance(ready)
    with pytest.raises(ValueError):
        core.advance(ready)  # not twice either


def test_ready_with_only_messages_needs_no_persisting() -> None:
    leader = _leader_a()
    leader.tick()  # a heartbeat round: nothing new to store

    ready = leader.ready()

    assert ready.messages or ready.early_messages
    assert (ready.hard_state, ready.entries, ready.snapshot) == (None, (), None)
    assert not ready.must_persist
    leader.advance(ready)


def test_acknowledgements_wait_for_persisting_while_leader_appends_go_early() -> None:
    leader = _leader_a()
    leader.propose(b"x")
    ready = leader.ready()
    assert ready.must_persist and ready.entries
    assert ready.early_messages, "§10.2.1: the leader may send before its own disk write"
    assert all(isinstance(m, AppendEntries) for m in ready.early_messages)
    leader.advance(ready)

    follower = _follower_b()
    follower.step(AppendEntries(1, "a", "b", 2, 1, (Entry(3, 1, b"y"),), commit=2))
    ready = follower.ready()
    assert ready.must_persist and ready.entries == (Entry(3, 1, b"y"),)
    assert ready.early_messages == ()
    assert ready.messages == (AppendResponse(1, "b", "a", index=3),)


def test_granted_vote_travels_with_its_hard_state() -> None:
    core = _core("b")

    core.step(VoteRequest(1, "c", "b", 0, 0))
    ready = core.ready()

    assert ready.hard_state == HardState(1, "c", 0)
    assert ready.must_persist
    assert ready.messages == (VoteResponse(1, "b", "c", granted=True),)
    assert ready.early_messages == ()


def test_local_snapshot_is_persisted_but_not_applied() -> None:
    core = _follower_b()

    snapshot = core.compact(2, b"state at 2")
    ready = core.ready()

    assert ready.snapshot == snapshot
    assert ready.must_persist
    assert not ready.apply_snapshot
    assert ready.committed_entries == ()
    core.advance(ready)
    assert core.log.offset == 2


def test_snapshot_from_the_leader_is_persisted_and_applied() -> None:
    core = _core("b")
    meta = SnapshotMeta(10, 1, ABC)
    data = b"the leader's state at 10"
    checksum = hashlib.sha256(data).hexdigest()

    core.step(InstallSnapshot(1, "a", "b", meta, 0, data, done=True, checksum=checksum))
    ready = core.ready()

    assert ready.snapshot == Snapshot(meta, data)
    assert ready.apply_snapshot
    assert ready.must_persist
    assert ready.messages == (SnapshotResponse(1, "b", "a", 10, 0, done=True),)
    core.advance(ready)
    assert core.applied_index == core.commit_index == 10


# -- compaction ------------------------------------------------------------------------------------


def test_compact_refuses_an_index_not_yet_applied() -> None:
    core = _core("b")
    core.step(AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1), Entry(2, 1, b"x")), commit=1))
    ready = core.ready()  # entry 1 is committed, but not applied until advance
    core.advance(ready)
    assert core.applied_index == 1

    with pytest.raises(ValueError, match="already applied"):
        core.compact(2, b"state")


def test_compact_refuses_an_index_at_or_below_the_snapshot() -> None:
    core = _follower_b()
    core.compact(2, b"state at 2")
    drain(core)

    with pytest.raises(ValueError, match="above the current snapshot"):
        core.compact(2, b"again")


# -- restarting from storage -----------------------------------------------------------------------


def _snapshot_at_5() -> Snapshot:
    return Snapshot(SnapshotMeta(5, 2, Membership(frozenset("abd"))), b"state at 5")


def test_restart_from_a_snapshot_and_a_tail() -> None:
    tail = (Entry(6, 2, b"six"), Entry(7, 3, b"seven"), Entry(8, 3, b"eight"))
    persisted = PersistedState(HardState(3, "a", 7), _snapshot_at_5(), tail)

    core = _core("b", persisted)

    assert core.membership == Membership(frozenset("abd")), "from the snapshot, not the config"
    assert (core.term, core.vote, core.commit_index) == (3, "a", 7)
    assert core.applied_index == 5
    assert core.log.last_index == 8
    ready = core.ready()
    assert ready.committed_entries == tail[:2], "committed entries are redelivered"
    assert ready.entries == (), "what came from storage need not be stored again"
    assert ready.hard_state is None
    assert not ready.apply_snapshot
    core.advance(ready)
    assert core.applied_index == 7


def test_restart_takes_the_membership_of_a_config_entry_in_the_tail() -> None:
    abde = Membership(frozenset("abde"))
    change = encode_config_entry(ConfigChange(ConfigChangeType.ADD_VOTER, "e"), abde)
    tail = (Entry(6, 2, change, EntryType.CONFIG),)
    persisted = PersistedState(HardState(2, None, 5), _snapshot_at_5(), tail)

    core = _core("b", persisted)

    assert core.membership == abde, "in force though not committed"


def test_restart_skips_what_the_application_already_applied() -> None:
    tail = (Entry(6, 2, b"six"), Entry(7, 3, b"seven"))
    persisted = PersistedState(HardState(3, "a", 7), _snapshot_at_5(), tail)

    core = _core("b", persisted, applied=6)

    assert core.applied_index == 6
    assert core.ready().committed_entries == (tail[1],)


@pytest.mark.parametrize(
    ("persisted", "problem"),
    [
        (PersistedState(HardState(1, None, 0), None, (Entry(1, 1), Entry(3, 1))), "consecutive"),
        (PersistedState(HardState(1, None, 0), _snapshot_at_5(), (Entry(7, 2),)), "consecutive"),
        (PersistedState(HardState(1, None, 3), None, (Entry(1, 1), Entry(2, 1))), "commit"),
        (PersistedState(HardState(2, None, 9), _snapshot_at_5(), (Entry(6, 2),)), "commit"),
    ],
    ids=["gap", "gap-after-snapshot", "commit-beyond-log", "commit-beyond-tail"],
)
def test_broken_storage_is_refused_naming_the_node(persisted: PersistedState, problem: str) -> None:
    with pytest.raises(ValueError, match=f"cannot restart node 'b'.*{problem}"):
        _core("b", persisted)


# -- ticks_until_due: how long a driver may sleep ----------------------------------------------


def _quiet_ticks_then_action(core: RaftCore) -> None:
    """The ticks before the due one change nothing a driver sees; the due one acts."""
    due = core.ticks_until_due()
    assert due >= 1
    for _ in range(due - 1):
        before = _state(core)
        core.tick()
        assert _state(core) == before and not core.has_ready()
    role = core.soft_state.role
    core.tick()
    assert core.has_ready() or core.soft_state.role is not role


@pytest.mark.parametrize("seed", SEEDS)
def test_a_follower_may_sleep_until_its_election_timeout(seed: int) -> None:
    core = RaftCore(RaftConfig("b", ABC), rng=random.Random(seed))
    core.step(AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1),), commit=1))
    drain(core)
    assert core.ticks_until_due() == core.randomized_election_timeout
    core.tick()
    core.tick()
    assert core.ticks_until_due() == core.randomized_election_timeout - 2
    _quiet_ticks_then_action(core)  # the election timeout: it campaigns (a pre-vote)


def test_a_leader_may_sleep_until_its_next_heartbeat_or_quorum_check() -> None:
    core = _leader_a()
    for _ in range(core.config.election_ticks * 2 // core.config.heartbeat_ticks):
        assert core.ticks_until_due() <= core.config.heartbeat_ticks
        _quiet_ticks_then_action(core)  # a heartbeat to each follower
        drain(core)
        for follower in ("b", "c"):  # they answer: the quorum check passes
            core.step(HeartbeatResponse(1, follower, "a"))
        drain(core)
    assert core.soft_state.role is Role.LEADER


def test_a_leader_that_hands_over_counts_every_tick() -> None:
    core = _leader_a()
    core.transfer_leadership("b")
    drain(core)
    assert core.ticks_until_due() == 1


# -- learn_commit: a forwarded proposal's answer carries its commit ------------------------------


def test_a_follower_commits_up_to_an_entry_the_leader_says_is_committed() -> None:
    core = _follower_b()  # entries 1, 2 committed
    core.step(AppendEntries(1, "a", "b", 2, 1, (Entry(3, 1, b"y"), Entry(4, 1, b"z")), commit=2))
    drain(core)
    assert core.commit_index == 2
    core.learn_commit(3, 1)
    assert core.commit_index == 3 and core.has_ready()
    ready = core.ready()
    assert [e.index for e in ready.committed_entries] == [3]
    core.advance(ready)
    core.learn_commit(4, 2)  # another term at that index: not our entry, nothing learned
    assert core.commit_index == 3
    core.learn_commit(2, 1)  # old news
    assert core.commit_index == 3


def test_a_commit_learned_before_its_entry_arrives_waits_for_it() -> None:
    core = _follower_b()
    core.learn_commit(4, 1)  # the answer came before the AppendEntries that carries entry 4
    assert core.commit_index == 2 and not core.has_ready()
    core.step(AppendEntries(1, "a", "b", 2, 1, (Entry(3, 1, b"y"),), commit=2))
    drain(core)
    assert core.commit_index == 2  # entry 4 is not here yet
    core.step(AppendEntries(1, "a", "b", 3, 1, (Entry(4, 1, b"z"), Entry(5, 1, b"w")), commit=2))
    assert core.commit_index == 4  # up to the entry it was told of, not beyond


def test_a_leader_ignores_a_learned_commit() -> None:
    core = _leader_a()
    core.propose(b"x")
    drain(core)
    before = core.commit_index
    core.learn_commit(core.log.last_index, 1)
    assert core.commit_index == before


def _leader_a_of_five_tick_heartbeats() -> RaftCore:
    """Like :func:`_leader_a`, with the runtime's ticks: heartbeats every 5, elections 15."""
    config = RaftConfig("a", ABC, election_ticks=15, heartbeat_ticks=5)
    core = elect(RaftCore(config, rng=random.Random(0)))
    for follower in ("b", "c"):
        core.step(AppendResponse(1, follower, "a", index=1))
    drain(core)
    return core


def test_a_follower_that_acknowledged_an_append_late_in_the_interval_gets_no_heartbeat() -> None:
    core = _leader_a_of_five_tick_heartbeats()
    beat = core.config.heartbeat_ticks
    for _ in range(beat):  # a first round: both acknowledged the no-op early in it
        core.tick()
    assert sorted(m.to for m in drain(core) if isinstance(m, Heartbeat)) == ["b", "c"]
    for _ in range(beat - 1):
        core.tick()  # late in the next interval
    core.propose(b"x")
    drain(core)
    core.step(AppendResponse(1, "b", "a", index=2))  # b took it; c says nothing
    drain(core)
    core.tick()
    beats = [m.to for m in drain(core) if isinstance(m, Heartbeat)]
    assert beats == ["c"]  # c's append may be lost: its heartbeat still goes
    for _ in range(beat):
        core.tick()
    beats = [m.to for m in drain(core) if isinstance(m, Heartbeat)]
    assert beats == ["b", "c"]  # nothing acknowledged since: both


def test_an_append_sent_early_in_the_interval_does_not_skip_the_heartbeat() -> None:
    """Even acknowledged late (a slow disk): the follower may have had it since just after
    the last round, and skipping would leave it almost two intervals without a word."""
    core = _leader_a_of_five_tick_heartbeats()
    beat = core.config.heartbeat_ticks
    for _ in range(beat):
        core.tick()
    drain(core)
    core.propose(b"x")  # right after the round
    drain(core)
    for _ in range(beat - 1):
        core.tick()  # the acknowledgements come late in the interval
    core.step(AppendResponse(1, "b", "a", index=2))
    core.step(AppendResponse(1, "c", "a", index=2))
    drain(core)
    core.tick()
    assert sorted(m.to for m in drain(core) if isinstance(m, Heartbeat)) == ["b", "c"]
