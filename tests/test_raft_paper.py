"""The rules of the Raft paper, checked one at a time on a single core (after etcd-io/raft's
``raft_paper_test.go``).

Every test names the section it checks and is laid out init / step / check: build a
:class:`RaftCore` from a hand-made persisted state, feed it hand-built messages, and look at the
Ready it hands back. Nothing here runs a cluster; where two nodes must talk (Figure 7), the test
carries their messages by hand.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import Any

import pytest

from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    Membership,
    Message,
    PersistedState,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

T = 10
"""The election timeout, in ticks, of every core built here."""

EARLY_KINDS = (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow)
"""The only messages a core may send before its Ready is persisted (leader traffic)."""

FIGURE_7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIGURE_7_FOLLOWERS = {
    "a": (1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": (1, 1, 1, 4),
    "c": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": (1, 1, 1, 4, 4, 4, 4),
    "f": (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


# ---------------------------------------------------------------------------------------------
# Helpers


def entries(terms: Sequence[int], start: int = 1) -> tuple[Entry, ...]:
    """A run of entries with these terms, the first at index ``start``."""
    return tuple(Entry(start + k, term) for k, term in enumerate(terms))


def new_core(
    node_id: str = "1",
    voters: Sequence[str] = ("1", "2", "3"),
    *,
    term: int = 0,
    vote: str | None = None,
    log: Sequence[int] = (),
    commit: int = 0,
    seed: int = 0,
    **options: Any,
) -> RaftCore:
    """A core restarted from a persisted state whose log has entries of terms ``log``; the
    Ready of the restart is already handled."""
    config = RaftConfig(node_id, Membership(frozenset(voters)), election_ticks=T, **options)
    persisted = PersistedState(HardState(term, vote, commit), None, entries(log))
    core = RaftCore(config, rng=random.Random(seed), persisted=persisted)
    drain(core)
    return core


def drain(core: RaftCore) -> Ready:
    """Take the core's Ready, check that only leader traffic is marked early, and advance."""
    rd = core.ready()
    for m in rd.early_messages:
        assert isinstance(m, EARLY_KINDS), f"{m} sent before its Ready was persisted"
    core.advance(rd)
    return rd


def sent(rd: Ready) -> list[Message]:
    return [*rd.early_messages, *rd.messages]


def step(core: RaftCore, message: Message) -> list[Message]:
    """Deliver one message and return every message the core sends in answer."""
    core.step(message)
    return sent(drain(core))


def tick_until_campaign(core: RaftCore) -> int:
    """Tick until the core starts campaigning; the number of ticks it took."""
    role, term = core.role, core.term
    for ticks in range(1, 4 * T):
        core.tick()
        if core.role is not role or core.term != term:
            return ticks
    raise AssertionError(f"{core.id} never campaigned")


def elect(core: RaftCore, granting: Sequence[str] | None = None) -> list[Message]:
    """Time out, campaign and win with votes from ``granting`` (default: the lowest-numbered
    peers). Returns what the new leader sends on taking office."""
    voters = sorted(core.membership.voters - {core.id})
    granting = voters if granting is None else list(granting)
    tick_until_campaign(core)
    out = sent(drain(core))
    for _ in range(2):  # a pre-vote round, then the real one
        for peer in granting:
            if core.role is Role.PRE_CANDIDATE:
                out = step(core, VoteResponse(core.term + 1, peer, core.id, True, pre_vote=True))
            elif core.role is Role.CANDIDATE:
                out = step(core, VoteResponse(core.term, peer, core.id, True))
    assert core.role is Role.LEADER, f"{core.id} did not win: {core.role}"
    return out


def log_of(core: RaftCore) -> list[tuple[int, int]]:
    """The core's log as (index, term) pairs."""
    return [(e.index, e.term) for e in core.log.entries]


def exchange(a: RaftCore, b: RaftCore, first: Sequence[Message]) -> list[Message]:
    """Carry messages between ``a`` and ``b`` until they fall quiet, starting with ``first``;
    messages to anyone else are dropped. Returns every message delivered, in order."""
    cores = {a.id: a, b.id: b}
    queue = deque(m for m in first if m.to in cores)
    delivered: list[Message] = []
    while queue:
        m = queue.popleft()
        delivered.append(m)
        assert len(delivered) < 500, "the exchange never fell quiet"
        queue.extend(x for x in step(cores[m.to], m) if x.to in cores)
    return delivered


def append(
    term: int, prev: tuple[int, int], terms: Sequence[int] = (), commit: int = 0, frm: str = "2"
) -> AppendEntries:
    """AppendEntries from ``frm`` to node 1 carrying entries of ``terms`` after ``prev``."""
    prev_index, prev_term = prev
    return AppendEntries(
        term, frm, "1", prev_index, prev_term, entries(terms, prev_index + 1), commit
    )


def in_role(role: Role, **options: Any) -> RaftCore:
    """Node 1 of {1, 2, 3} at term 1 in the given role (pre-vote on only for PRE_CANDIDATE)."""
    options.setdefault("pre_vote", role is Role.PRE_CANDIDATE)
    core = new_core(term=1, **options)
    if role is Role.LEADER:
        elect(core)
    elif role is not Role.FOLLOWER:
        tick_until_campaign(core)
        drain(core)
    assert core.role is role
    return core


# ---------------------------------------------------------------------------------------------
# §5.1 Raft basics: terms


@pytest.mark.parametrize(
    "role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER], ids=lambda r: r.value
)
@pytest.mark.parametrize("kind", ["append", "heartbeat", "vote_request", "vote_rejected"])
def test_higher_term_message_makes_any_role_a_follower_of_that_term(role: Role, kind: str) -> None:
    """§5.1: "If one server's current term is smaller than the other's, then it updates its
    current term to the larger value. If a candidate or leader discovers that its term is out of
    date, it immediately reverts to follower state." """
    core = in_role(role, check_quorum=False)
    new_term = core.term + 2
    last = (core.log.last_index, core.log.last_term)
    message: Message = {
        "append": AppendEntries(new_term, "2", "1", *last, (), 0),
        "heartbeat": Heartbeat(new_term, "2", "1", 0),
        "vote_request": VoteRequest(new_term, "2", "1", *last),
        "vote_rejected": VoteResponse(new_term, "2", "1", granted=False),
    }[kind]

    rd_messages = step(core, message)

    assert core.term == new_term
    assert core.role is Role.FOLLOWER
    assert core.leader_id == ("2" if kind in ("append", "heartbeat") else None)
    assert core.hard_state.term == new_term
    if kind == "vote_request":
        assert core.vote == "2"
        assert [type(m) for m in rd_messages] == [VoteResponse]
    else:
        assert core.vote is None


@pytest.mark.parametrize(
    "message",
    [
        append(1, (0, 0), (1,)),
        Heartbeat(1, "2", "1", 0),
        VoteRequest(1, "2", "1", 5, 1),
        VoteResponse(1, "2", "1", granted=True),
        AppendResponse(1, "2", "1", index=1),
    ],
    ids=lambda m: type(m).__name__,
)
def test_stale_term_message_is_ignored(message: Message) -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the request."
    Like etcd-io/raft, without pre-vote or check-quorum the core simply drops it: no reply, and
    no change to its term, vote, leader or log."""
    core = new_core(term=2, log=(1, 2), pre_vote=False, check_quorum=False)
    before = (core.hard_state, core.soft_state, log_of(core))

    assert step(core, message) == []
    assert (core.hard_state, core.soft_state, log_of(core)) == before


@pytest.mark.parametrize(("pre_vote", "check_quorum"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize(
    "message", [append(1, (0, 0), (1,)), Heartbeat(1, "2", "1", 0)], ids=["append", "heartbeat"]
)
def test_stale_leader_traffic_is_answered_with_the_newer_term(
    message: Message, pre_vote: bool, check_quorum: bool
) -> None:
    """§5.1 with thesis §9.6: with pre-vote or check-quorum a deposed leader may never see a
    higher-term vote request, so a stale AppendEntries or Heartbeat is answered with a rejecting
    AppendResponse that carries the current term; nothing else changes."""
    core = new_core(term=2, log=(1, 2), pre_vote=pre_vote, check_quorum=check_quorum)
    before = (core.hard_state, log_of(core))

    out = step(core, message)

    assert len(out) == 1
    reply = out[0]
    assert isinstance(reply, AppendResponse)
    assert (reply.term, reply.to, reply.reject) == (2, "2", True)
    assert (core.hard_state, log_of(core)) == before
    assert core.leader_id is None


def test_deposed_leader_steps_down_on_the_newer_term_in_a_reply() -> None:
    """§5.1: a leader that learns of a newer term from any reply reverts to follower — here the
    rejection a newer-term follower sends back to its stale heartbeat."""
    leader = in_role(Role.LEADER, check_quorum=True)
    follower = new_core("2", term=leader.term + 1, log=(1,), pre_vote=False)
    leader.tick()
    heartbeat = next(m for m in sent(drain(leader)) if m.to == "2")
    assert isinstance(heartbeat, Heartbeat)

    reply = step(follower, heartbeat)
    step(leader, reply[0])

    assert leader.role is Role.FOLLOWER
    assert leader.term == follower.term


def test_stale_vote_request_is_not_granted() -> None:
    """§5.1: a RequestVote from an older term never gets a vote, even from a node that has not
    voted in its own term."""
    core = new_core(term=3, log=(1,))

    out = step(core, VoteRequest(2, "2", "1", 10, 2))

    assert not any(isinstance(m, VoteResponse) and m.granted for m in out)
    assert core.vote is None
    assert core.term == 3


def test_stale_vote_does_not_count_towards_an_election() -> None:
    """§5.1: a candidate ignores a vote granted in an earlier term."""
    core = in_role(Role.CANDIDATE)
    assert core.term == 2

    step(core, VoteResponse(1, "2", "1", granted=True))

    assert core.role is Role.CANDIDATE


def test_stale_leader_does_not_hold_back_an_election() -> None:
    """§5.1 with Figure 2 ("Rules for Servers: Followers"): only AppendEntries from the *current*
    leader restart the election timer; a deposed leader's heartbeats do not."""
    core = new_core(term=2, pre_vote=False)
    for _ in range(core.randomized_election_timeout - 1):
        core.tick()

    step(core, Heartbeat(1, "2", "1", 0))
    core.tick()

    assert core.role is Role.CANDIDATE
    assert core.term == 3


# ---------------------------------------------------------------------------------------------
# §5.2 Leader election


def test_node_starts_as_follower() -> None:
    """§5.2: "When servers start up, they begin as followers." """
    core = new_core(term=5, vote="2", log=(1, 5))

    assert core.role is Role.FOLLOWER
    assert (core.term, core.vote) == (5, "2")


@pytest.mark.parametrize("start", [Role.FOLLOWER, Role.CANDIDATE], ids=lambda r: r.value)
def test_election_timeout_starts_an_election(start: Role) -> None:
    """§5.2: "If a follower receives no communication over a period of time called the election
    timeout ... it increments its current term and transitions to candidate state. It then votes
    for itself and issues RequestVote RPCs in parallel to each of the other servers." A candidate
    that neither wins nor loses times out and does the same in the next term."""
    core = in_role(start, pre_vote=False)
    term = core.term

    tick_until_campaign(core)
    rd = drain(core)

    assert core.role is Role.CANDIDATE
    assert core.term == term + 1
    assert core.vote == "1"
    assert rd.hard_state == HardState(term + 1, "1", 0)
    requests = sorted(rd.messages, key=lambda m: m.to)
    assert requests == [
        VoteRequest(term + 1, "1", "2", 0, 0),
        VoteRequest(term + 1, "1", "3", 0, 0),
    ]
    assert rd.early_messages == ()


def test_vote_request_carries_the_last_log_index_and_term() -> None:
    """§5.2 / §5.4.1: RequestVote names the candidate's last log index and term."""
    core = new_core(term=4, log=(1, 1, 3, 4), pre_vote=False)

    tick_until_campaign(core)
    rd = drain(core)

    assert {(m.to, m.term, m.last_log_index, m.last_log_term) for m in rd.messages} == {
        ("2", 5, 4, 4),
        ("3", 5, 4, 4),
    }


def test_pre_vote_round_comes_first_and_changes_no_term() -> None:
    """§5.2 with thesis §9.6: with pre-vote, a timed-out follower first asks whether it could
    win in the next term, without incrementing its term or voting; only with a majority of
    pre-votes does it become a candidate, increment its term and ask for real votes."""
    core = new_core(term=3, log=(1, 3), pre_vote=True)

    tick_until_campaign(core)
    rd = drain(core)

    assert core.role is Role.PRE_CANDIDATE
    assert (core.term, core.vote) == (3, None)
    assert rd.hard_state is None
    assert sorted(rd.messages, key=lambda m: m.to) == [
        VoteRequest(4, "1", "2", 2, 3, pre_vote=True),
        VoteRequest(4, "1", "3", 2, 3, pre_vote=True),
    ]

    out = step(core, VoteResponse(4, "2", "1", granted=True, pre_vote=True))

    assert core.role is Role.CANDIDATE
    assert (core.term, core.vote) == (4, "1")
    assert sorted(out, key=lambda m: m.to) == [
        VoteRequest(4, "1", "2", 2, 3),
        VoteRequest(4, "1", "3", 2, 3),
    ]


def test_election_timeout_is_randomized_between_t_and_2t() -> None:
    """§5.2: "election timeouts are chosen randomly from a fixed interval (e.g., 150–300ms)";
    here [T, 2T) ticks, drawn from the injected random generator."""
    first_timeouts = []
    second_timeouts = []
    for seed in range(60):
        core = new_core(seed=seed, pre_vote=False)
        first_timeouts.append(tick_until_campaign(core))
        drain(core)
        second_timeouts.append(tick_until_campaign(core))  # the candidate's own timeout
        assert core.term == 2

    for timeouts in (first_timeouts, second_timeouts):
        assert all(T <= t < 2 * T for t in timeouts), timeouts
        assert len(set(timeouts)) >= T // 2, f"timeouts barely spread: {sorted(set(timeouts))}"


def test_same_seed_gives_the_same_timeout() -> None:
    """§5.2: the randomness comes only from the injected generator, so a seed replays."""
    a = new_core(seed=7, pre_vote=False)
    b = new_core(seed=7, pre_vote=False)

    assert tick_until_campaign(a) == tick_until_campaign(b)


def test_follower_hearing_from_leader_never_times_out() -> None:
    """§5.2: "A server remains in follower state as long as it receives valid RPCs from a leader
    or candidate." """
    core = new_core(term=1, pre_vote=False)

    for _ in range(10):
        for _ in range(T - 1):
            core.tick()
        step(core, Heartbeat(1, "2", "1", 0))

    assert core.role is Role.FOLLOWER
    assert core.term == 1


def test_leader_sends_heartbeats_every_heartbeat_interval() -> None:
    """§5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries) to
    all followers in order to maintain their authority." """
    core = in_role(Role.LEADER)

    core.tick()
    rd = drain(core)

    beats = sorted((m for m in rd.early_messages if isinstance(m, Heartbeat)), key=lambda m: m.to)
    assert [(m.to, m.term) for m in beats] == [("2", core.term), ("3", core.term)]


@pytest.mark.parametrize(
    ("size", "votes", "expected"),
    [
        # win with votes from a majority
        (1, {}, Role.LEADER),
        (3, {"2": True}, Role.LEADER),
        (3, {"2": True, "3": True}, Role.LEADER),
        (3, {"2": False, "3": True}, Role.LEADER),
        (5, {"2": True, "3": True}, Role.LEADER),
        (5, {"2": False, "3": True, "4": False, "5": True}, Role.LEADER),
        # return to follower when a majority refuses
        (3, {"2": False, "3": False}, Role.FOLLOWER),
        (5, {"2": False, "3": False, "4": False}, Role.FOLLOWER),
        (5, {"2": True, "3": False, "4": False, "5": False}, Role.FOLLOWER),
        # stay candidate while undecided
        (3, {}, Role.CANDIDATE),
        (3, {"2": False}, Role.CANDIDATE),
        (5, {"2": True}, Role.CANDIDATE),
        (5, {"2": False, "3": False}, Role.CANDIDATE),
        (5, {"2": True, "3": False, "4": False}, Role.CANDIDATE),
    ],
)
def test_candidate_outcome_after_one_round_of_votes(
    size: int, votes: dict[str, bool], expected: Role
) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the servers
    in the full cluster for the same term"; it returns to follower once a majority has refused
    (etcd-io/raft's rule), and otherwise remains a candidate."""
    voters = [str(n) for n in range(1, size + 1)]
    core = new_core(voters=voters, pre_vote=False)
    tick_until_campaign(core)
    drain(core)

    for peer, granted in votes.items():
        step(core, VoteResponse(1, peer, "1", granted))

    assert core.role is expected
    assert core.term == 1


def test_duplicate_votes_from_one_voter_count_once() -> None:
    """§5.2: a majority of *servers*: a vote delivered twice is still one vote."""
    core = new_core(voters=("1", "2", "3", "4", "5"), pre_vote=False)
    tick_until_campaign(core)
    drain(core)

    step(core, VoteResponse(1, "2", "1", True))
    step(core, VoteResponse(1, "2", "1", True))

    assert core.role is Role.CANDIDATE


@pytest.mark.parametrize("kind", ["append", "heartbeat"])
@pytest.mark.parametrize("role", [Role.PRE_CANDIDATE, Role.CANDIDATE], ids=lambda r: r.value)
def test_candidate_yields_to_a_leader_of_its_own_term(role: Role, kind: str) -> None:
    """§5.2: "If the leader's term ... is at least as large as the candidate's current term,
    then the candidate recognizes the leader as legitimate and returns to follower state." """
    core = in_role(role)
    term = core.term
    message: Message = (
        append(term, (0, 0), (term,)) if kind == "append" else Heartbeat(term, "2", "1", 0)
    )

    out = step(core, message)

    assert core.role is Role.FOLLOWER
    assert (core.term, core.leader_id) == (term, "2")
    assert all(m.to == "2" and m.term == term for m in out)


@pytest.mark.parametrize(
    ("voted_for", "candidate", "granted"),
    [
        (None, "2", True),
        (None, "3", True),
        ("2", "2", True),
        ("3", "3", True),
        ("2", "3", False),
        ("3", "2", False),
        ("1", "2", False),  # a candidate voted for itself
    ],
)
def test_at_most_one_vote_per_term(voted_for: str | None, candidate: str, granted: bool) -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis." The vote persisted before a restart still binds."""
    core = new_core(term=1, vote=voted_for)

    out = step(core, VoteRequest(1, candidate, "1", 0, 0))

    assert out == [VoteResponse(1, "1", candidate, granted)]
    assert core.vote == (candidate if granted else voted_for)


def test_first_come_first_served_within_a_term() -> None:
    """§5.2: of two candidates of the same term, the first to ask gets the vote."""
    core = new_core(term=1)

    first = step(core, VoteRequest(2, "2", "1", 0, 0))
    second = step(core, VoteRequest(2, "3", "1", 0, 0))
    again = step(core, VoteRequest(2, "2", "1", 0, 0))

    assert first == [VoteResponse(2, "1", "2", True)]
    assert second == [VoteResponse(2, "1", "3", False)]
    assert again == [VoteResponse(2, "1", "2", True)]  # a retried request is answered the same
    assert core.hard_state == HardState(2, "2", 0)


def test_candidate_that_lost_keeps_its_vote_for_that_term() -> None:
    """§5.2: a candidate voted for itself, so after a majority refuses it and it returns to
    follower it still may not vote for another candidate of the same term."""
    core = new_core(pre_vote=False)
    tick_until_campaign(core)
    drain(core)
    step(core, VoteResponse(1, "2", "1", False))
    step(core, VoteResponse(1, "3", "1", False))
    assert core.role is Role.FOLLOWER

    out = step(core, VoteRequest(1, "2", "1", 5, 1))

    assert out == [VoteResponse(1, "1", "2", False)]
    assert core.hard_state == HardState(1, "1", 0)


def test_granting_a_vote_restarts_the_election_timer() -> None:
    """Figure 2 ("Rules for Servers: Followers"): a follower converts to candidate only when the
    election timeout elapses "without receiving AppendEntries RPC from current leader or granting
    vote to candidate"."""
    core = new_core(term=1, pre_vote=False)
    timeout = core.randomized_election_timeout
    for _ in range(timeout - 1):
        core.tick()

    step(core, VoteRequest(2, "2", "1", 0, 0))
    for _ in range(T - 1):
        core.tick()

    assert core.role is Role.FOLLOWER
    assert (core.term, core.vote) == (2, "2")


# ---------------------------------------------------------------------------------------------
# §5.3 Log replication


def test_new_leader_first_appends_a_no_op_of_its_term() -> None:
    """§5.3 with §8: a new leader appends a no-op entry of its own term and sends it to every
    follower after the last entry of its log."""
    core = new_core(term=2, log=(1, 2), commit=1, pre_vote=False)

    out = elect(core)

    assert log_of(core) == [(1, 1), (2, 2), (3, 3)]
    assert core.log.entries[-1].data == b""
    appends = sorted((m for m in out if isinstance(m, AppendEntries)), key=lambda m: m.to)
    assert [(m.to, m.term, m.prev_index, m.prev_term, m.entries, m.commit) for m in appends] == [
        ("2", 3, 2, 2, (Entry(3, 3),), 1),
        ("3", 3, 2, 2, (Entry(3, 3),), 1),
    ]


def test_leader_appends_a_proposal_and_sends_it_to_every_follower() -> None:
    """§5.3: "The leader appends the command to its log as a new entry, then issues
    AppendEntries RPCs in parallel to each of the other servers"; each names the index and term
    of the entry before the new ones. The entry is persisted while the messages fly
    (thesis §10.2.1), so they leave as early messages."""
    core = in_role(Role.LEADER)
    for peer in ("2", "3"):
        step(core, AppendResponse(core.term, peer, "1", index=1))
    assert core.commit_index == 1

    entry = core.propose(b"x")
    rd = drain(core)

    assert entry == Entry(2, core.term, b"x")
    assert rd.entries == (entry,)
    assert core.commit_index == 1
    appends = sorted(rd.early_messages, key=lambda m: m.to)
    assert appends == [
        AppendEntries(core.term, "1", "2", 1, core.term, (entry,), 1),
        AppendEntries(core.term, "1", "3", 1, core.term, (entry,), 1),
    ]
    assert rd.messages == ()


@pytest.mark.parametrize(
    ("size", "acks", "committed"),
    [
        (1, (), True),
        (3, (), False),
        (3, ("2",), True),
        (3, ("2", "3"), True),
        (5, (), False),
        (5, ("2",), False),
        (5, ("2", "3"), True),
        (5, ("2", "3", "4", "5"), True),
    ],
)
def test_leader_commits_once_a_majority_stores_the_entry(
    size: int, acks: tuple[str, ...], committed: bool
) -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has replicated it
    on a majority of the servers"; the leader then tells followers the new commit index in its
    next AppendEntries, and hands the entry to the application."""
    voters = [str(n) for n in range(1, size + 1)]
    core = new_core(voters=voters, pre_vote=False)
    elect(core)
    drain(core)
    no_op = core.log.last_index

    out: list[Message] = []
    for peer in acks:
        out += step(core, AppendResponse(core.term, peer, "1", index=no_op))

    assert (core.commit_index == no_op) is committed
    if committed and acks:
        assert any(m.commit == no_op for m in out if isinstance(m, AppendEntries))


def test_commit_reaches_the_application_once() -> None:
    """§5.3: "the leader applies the entry to its state machine" once committed, in log order,
    and each committed entry is handed over exactly once."""
    core = new_core(voters=("1",), pre_vote=False)
    tick_until_campaign(core)
    first = drain(core)  # elected at once; the no-op is persisted here
    core.propose(b"a")
    core.propose(b"b")
    handed = list(first.committed_entries)
    for _ in range(3):
        handed += drain(core).committed_entries

    assert [(e.index, e.data) for e in handed] == [(1, b""), (2, b"a"), (3, b"b")]


@pytest.mark.parametrize(
    ("prev", "reject", "index", "hint"),
    [
        ((0, 0), False, 1, None),  # below the commit index: everything there matches
        ((1, 1), False, 1, None),
        ((2, 2), False, 2, None),
        ((2, 1), True, 2, (1, 1)),  # term mismatch at 2: skip our term-2 entry
        ((3, 3), True, 3, (2, 2)),  # beyond our log: our last entry is the guess
        ((5, 1), True, 5, (1, 1)),
    ],
)
def test_follower_checks_the_previous_entry(
    prev: tuple[int, int], reject: bool, index: int, hint: tuple[int, int] | None
) -> None:
    """§5.3: "If the follower does not find an entry in its log with the same index and term
    [as prevLogIndex/prevLogTerm], then it refuses the new entries." The refusal carries a hint
    — the last index whose term is at most prevLogTerm, and that term — so the leader can skip a
    whole conflicting term at once."""
    core = new_core(term=2, log=(1, 2), commit=1)

    out = step(core, append(2, prev))

    assert len(out) == 1
    reply = out[0]
    assert isinstance(reply, AppendResponse)
    assert (reply.term, reply.to, reply.reject, reply.index) == (2, "2", reject, index)
    if hint is not None:
        assert (reply.hint_index, reply.hint_term) == hint
    assert log_of(core) == [(1, 1), (2, 2)]


@pytest.mark.parametrize(
    ("prev", "terms", "expected_log", "written"),
    [
        ((2, 2), (3,), (1, 2, 3), [(3, 3)]),
        ((1, 1), (3, 4), (1, 3, 4), [(2, 3), (3, 4)]),
        ((0, 0), (1,), (1, 2), []),  # already there: nothing to write, nothing truncated
        ((0, 0), (3,), (3,), [(1, 3)]),
        ((1, 1), (2,), (1, 2), []),
        ((1, 1), (2, 4), (1, 2, 4), [(3, 4)]),
    ],
)
def test_follower_replaces_a_conflicting_suffix(
    prev: tuple[int, int],
    terms: tuple[int, ...],
    expected_log: tuple[int, ...],
    written: list[tuple[int, int]],
) -> None:
    """§5.3 / Figure 2, AppendEntries receiver rules 3–4: "If an existing entry conflicts with a
    new one (same index but different terms), delete the existing entry and all that follow it.
    Append any new entries not already in the log." Only the changed entries are persisted."""
    core = new_core(term=2, log=(1, 2))

    core.step(append(4, prev, terms))
    rd = drain(core)

    assert log_of(core) == list(enumerate(expected_log, start=1))
    assert [(e.index, e.term) for e in rd.entries] == written
    assert rd.messages == (AppendResponse(4, "1", "2", index=prev[0] + len(terms)),)


@pytest.mark.parametrize("name", sorted(FIGURE_7_FOLLOWERS))
def test_figure_7_follower_takes_the_leaders_entries(name: str) -> None:
    """§5.3 / Figure 7: given the leader's entries 4–10 after a matching entry 3, each of the
    followers (a)–(f) ends with the leader's entries at 1–10: missing ones are added, and a
    conflicting one (e, f) is replaced together with everything after it. Entries after 10 that
    conflict with nothing sent (c, d) stay: the receiver deletes only on a conflict."""
    follower = FIGURE_7_FOLLOWERS[name]
    core = new_core(term=max(follower), log=follower)

    core.step(append(8, (3, 1), FIGURE_7_LEADER[3:]))
    rd = drain(core)

    first_diff = next(
        (i for i, t in enumerate(FIGURE_7_LEADER) if i >= len(follower) or follower[i] != t), None
    )
    conflicted = first_diff is not None and first_diff < len(follower)
    assert [t for _, t in log_of(core)] == [
        *FIGURE_7_LEADER,
        *(() if conflicted else follower[len(FIGURE_7_LEADER) :]),
    ]
    assert rd.messages == (AppendResponse(8, "1", "2", index=10),)
    written = [(e.index, e.term) for e in rd.entries]
    leader_pairs = list(enumerate(FIGURE_7_LEADER, start=1))
    assert written == ([] if first_diff is None else leader_pairs[first_diff:])


@pytest.mark.parametrize(
    ("log", "terms", "leader_commit", "expected_commit"),
    [
        ((), (1, 1), 1, 1),
        ((), (1, 1), 2, 2),
        ((), (1, 1), 5, 2),  # never beyond the last new entry
        ((1, 1, 1), (1,), 3, 1),  # the last *new* entry, not our last entry
        ((1, 1, 1), (), 3, 0),  # an empty AppendEntries after index 0 vouches for nothing later
    ],
)
def test_follower_commits_up_to_min_of_leader_commit_and_last_new_entry(
    log: tuple[int, ...], terms: tuple[int, ...], leader_commit: int, expected_commit: int
) -> None:
    """§5.3 / Figure 2, receiver rule 5: "If leaderCommit > commitIndex, set commitIndex =
    min(leaderCommit, index of last new entry)"; committed entries go to the application."""
    core = new_core(term=1, log=log)

    core.step(append(1, (0, 0), terms, commit=leader_commit))
    rd = drain(core)

    assert core.commit_index == expected_commit
    assert [e.index for e in rd.committed_entries] == list(range(1, expected_commit + 1))
    assert rd.hard_state == (HardState(1, None, expected_commit) if expected_commit else None)


def test_follower_commit_from_heartbeat() -> None:
    """§5.3: the leader's commit index reaches followers on heartbeats too (bounded by what the
    follower is known to hold)."""
    core = new_core(term=1, log=(1, 1, 1))

    step(core, Heartbeat(1, "2", "1", commit=2))

    assert core.commit_index == 2


@pytest.mark.parametrize(
    ("leader_log", "follower_log"),
    [
        ((1,) + (3,) * 20, (1,) + (2,) * 20),  # same length, diverging after entry 1
        ((1,) + (3,) * 20, (1,)),  # follower far behind
        ((1,) + (3,) * 10, (1,) + (2,) * 30),  # follower with a long stale tail
        ((1, 1) + (2,) * 5 + (3,) * 15, (1, 1) + (2,) * 5 + (4,) * 15),
    ],
    ids=["diverged", "behind", "long-stale-tail", "diverged-later"],
)
def test_leader_backs_up_a_whole_term_per_round_trip(
    leader_log: tuple[int, ...], follower_log: tuple[int, ...]
) -> None:
    """§5.3: "when rejecting an AppendEntries request, the follower can include the term of the
    conflicting entry and the first index it stores for that term. With this information, the
    leader can decrement nextIndex to bypass all of the conflicting entries in that term; one
    AppendEntries RPC will be required for each term with conflicting entries, rather than one
    per entry." Here one rejection is enough, however many entries diverge."""
    term = max(leader_log + follower_log)
    leader = new_core("1", term=term, log=leader_log, pre_vote=False)
    # A leader's log holds every committed entry; the follower's higher-term tail (last case)
    # comes from a leader that never committed it, so node 3 votes for node 1.
    out = elect(leader, granting=["3"])
    follower = new_core("2", term=term, log=follower_log)

    delivered = exchange(leader, follower, out)

    assert log_of(follower) == log_of(leader)
    rejections = [m for m in delivered if isinstance(m, AppendResponse) and m.reject]
    assert len(rejections) == 1
    until_match = []
    for m in delivered:
        if isinstance(m, AppendEntries):
            until_match.append(m)
        if isinstance(m, AppendResponse) and not m.reject:
            break
    assert len(until_match) == 2


def test_leader_retries_append_entries_that_were_lost() -> None:
    """§5.3: "If followers crash or run slowly, or if network packets are lost, the leader
    retries AppendEntries RPCs indefinitely until all followers eventually store all log
    entries." Here the first AppendEntries to node 2 is lost; the next heartbeat answer makes the
    leader send the entries again."""
    leader = new_core(term=1, pre_vote=False)
    lost = [m for m in elect(leader) if m.to == "2"]
    assert [type(m) for m in lost] == [AppendEntries]
    follower = new_core("2", term=1)

    leader.tick()
    beat = next(m for m in sent(drain(leader)) if m.to == "2")
    answers = step(follower, beat)
    retry = [m for m in step(leader, answers[0]) if m.to == "2"]

    assert [type(m) for m in retry] == [AppendEntries]
    assert retry[0].entries == tuple(leader.log.entries)
    exchange(leader, follower, retry)
    assert log_of(follower) == log_of(leader)


def test_reordered_append_entries_never_undo_newer_entries() -> None:
    """§5.3 / §5.5 ("Raft RPCs are idempotent"): an AppendEntries delayed past a later one
    carries entries the follower already has; the follower keeps its longer log (it deletes only
    on a conflict), and the leader does not move its idea of the follower back."""
    leader = new_core(term=1, pre_vote=False)
    first = next(m for m in elect(leader) if m.to == "2")
    follower = new_core("2", term=1)
    ack = step(follower, first)
    step(leader, ack[0])
    leader.propose(b"a")
    second = next(m for m in sent(drain(leader)) if m.to == "2")
    assert isinstance(first, AppendEntries) and isinstance(second, AppendEntries)

    newer_ack = step(follower, second)
    late_ack = step(follower, first)  # the network delivers the first message again

    assert log_of(follower) == log_of(leader) == [(1, 2), (2, 2)]
    assert late_ack == [AppendResponse(2, "2", "1", index=1)]
    step(leader, newer_ack[0])
    step(leader, late_ack[0])
    assert leader.progress["2"].match == 2


# ---------------------------------------------------------------------------------------------
# §5.4 Safety


@pytest.mark.parametrize(
    ("voter_log", "last_index", "last_term", "granted"),
    [
        ((), 0, 0, True),
        ((1, 1), 2, 1, True),  # same last term, same length
        ((1, 1), 3, 1, True),  # same last term, longer
        ((1, 1), 1, 1, False),  # same last term, shorter
        ((1, 1), 1, 2, True),  # higher last term wins even when shorter
        ((1, 2), 5, 1, False),  # lower last term loses even when longer
        ((1, 2), 2, 2, True),
        ((1, 2), 1, 2, False),
        ((1, 2), 0, 0, False),  # an empty log is behind any other
    ],
)
def test_vote_only_for_an_up_to_date_log(
    voter_log: tuple[int, ...], last_index: int, last_term: int, granted: bool
) -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
    candidate ... If the logs have last entries with different terms, then the log with the
    later term is more up-to-date. If the logs end with the same term, then whichever log is
    longer is more up-to-date." """
    core = new_core(term=2, log=voter_log)

    out = step(core, VoteRequest(3, "2", "1", last_index, last_term))

    assert out == [VoteResponse(3, "1", "2", granted)]
    assert core.term == 3
    assert core.vote == ("2" if granted else None)


@pytest.mark.parametrize("granted", [True, False])
def test_pre_vote_follows_the_same_up_to_date_rule_without_voting(granted: bool) -> None:
    """§5.4.1 with thesis §9.6: a pre-vote is granted under the same log comparison, but it
    records no vote and changes no term."""
    core = new_core(term=2, log=(1, 2))
    last = (2, 2) if granted else (2, 1)

    out = step(core, VoteRequest(3, "2", "1", *last, pre_vote=True))

    assert out == [VoteResponse(3 if granted else 2, "1", "2", granted, pre_vote=True)]
    assert core.hard_state == HardState(2, None, 0)


def test_figure_8_leader_does_not_commit_an_earlier_term_by_counting_replicas() -> None:
    """§5.4.2 / Figure 8: "Raft never commits log entries from previous terms by counting
    replicas. Only log entries from the leader's current term are committed by counting
    replicas; once an entry from the current term has been committed in this way, then all
    prior entries are committed indirectly because of the Log Matching Property."

    The leader of term 4 holds an entry of term 2 at index 2; three of five servers storing it
    does not commit it. Once the leader's own no-op (term 4, index 3) is on a majority, both
    commit together."""
    voters = ("1", "2", "3", "4", "5")
    leader = new_core(voters=voters, term=3, log=(1, 2), commit=1, pre_vote=False)
    elect(leader, granting=["2", "3"])
    assert leader.term == 4
    assert log_of(leader) == [(1, 1), (2, 2), (3, 4)]

    committed: list[Entry] = []
    for peer in ("2", "3"):  # the term-2 entry now sits on 1, 2 and 3: a majority
        leader.step(AppendResponse(4, peer, "1", index=2))
        committed += drain(leader).committed_entries
    assert leader.commit_index == 1
    assert committed == []

    leader.step(AppendResponse(4, "2", "1", index=3))
    committed += drain(leader).committed_entries
    assert leader.commit_index == 1  # the term-4 entry is on only two of five

    leader.step(AppendResponse(4, "3", "1", index=3))
    committed += drain(leader).committed_entries
    assert leader.commit_index == 3
    assert [(e.index, e.term) for e in committed] == [(2, 2), (3, 4)]


def test_figure_8_even_unanimous_replication_of_an_old_term_does_not_commit() -> None:
    """§5.4.2: counting replicas never commits an earlier term's entry, however many hold it."""
    voters = ("1", "2", "3")
    leader = new_core(voters=voters, term=3, log=(1, 2), commit=1, pre_vote=False)
    elect(leader)

    for peer in ("2", "3"):
        step(leader, AppendResponse(leader.term, peer, "1", index=2))

    assert leader.commit_index == 1


@pytest.mark.parametrize("name", sorted(FIGURE_7_FOLLOWERS))
def test_figure_7_leader_brings_every_follower_log_in_line(name: str) -> None:
    """§5.3 / Figure 7: "the leader handles inconsistencies by forcing the followers' logs to
    duplicate its own." The leader of term 8 (log 1 1 1 4 4 5 5 6 6 6) talks only to one of the
    followers (a)–(f) until they fall quiet; the follower ends with exactly the leader's log,
    the leader's no-op included, and both agree on the commit index."""
    follower_log = FIGURE_7_FOLLOWERS[name]
    leader = new_core("1", term=7, log=FIGURE_7_LEADER, pre_vote=False)
    out = elect(leader, granting=["3"])
    assert leader.term == 8
    follower = new_core("2", term=max(follower_log), log=follower_log)

    exchange(leader, follower, out)

    assert log_of(leader) == list(enumerate((*FIGURE_7_LEADER, 8), start=1))
    assert log_of(follower) == log_of(leader)
    assert follower.term == 8
    assert leader.role is Role.LEADER
    assert leader.commit_index == follower.commit_index == 11


# ---------------------------------------------------------------------------------------------
# Durability: answer only what is on disk (Figure 2 "Persistent state"; thesis §10.2.1)


def test_granted_vote_leaves_only_with_the_persisted_vote() -> None:
    """Figure 2: currentTerm and votedFor are "updated on stable storage before responding to
    RPCs". The granting VoteResponse is a late message of the very Ready whose hard state
    records the vote, never an early one."""
    core = new_core(term=1, log=(1,))

    core.step(VoteRequest(2, "3", "1", 1, 1))
    rd = core.ready()

    assert rd.hard_state == HardState(2, "3", 0)
    assert rd.messages == (VoteResponse(2, "1", "3", True),)
    assert rd.early_messages == ()
    core.advance(rd)


def test_accepted_entries_are_acknowledged_only_with_the_entries_persisted() -> None:
    """Figure 2: a follower acknowledges entries only once they are on stable storage, so the
    AppendResponse is a late message of the Ready that carries the entries to persist."""
    core = new_core(term=1, log=(1,))

    core.step(append(2, (1, 1), (2, 2)))
    rd = core.ready()

    assert rd.entries == entries((2, 2), start=2)
    assert rd.hard_state == HardState(2, None, 0)
    assert rd.messages == (AppendResponse(2, "1", "2", index=3),)
    assert rd.early_messages == ()
    core.advance(rd)


def test_candidate_persists_its_own_vote_with_its_requests() -> None:
    """Figure 2: the candidate's vote for itself and its new term are in the Ready that carries
    its RequestVote messages."""
    core = new_core(term=4, pre_vote=False)

    tick_until_campaign(core)
    rd = core.ready()

    assert rd.hard_state == HardState(5, "1", 0)
    assert {m.to for m in rd.messages if isinstance(m, VoteRequest)} == {"2", "3"}
    assert rd.early_messages == ()
    core.advance(rd)


def test_acknowledgements_never_travel_early_in_a_whole_exchange() -> None:
    """Thesis §10.2.1: only leader traffic may be sent before persisting. Over a whole Figure 7
    exchange (f), every VoteResponse and AppendResponse is a late message (``drain`` checks each
    Ready), and each accepting AppendResponse follows the entries it acknowledges."""
    leader = new_core("1", term=7, log=FIGURE_7_LEADER, pre_vote=False)
    out = elect(leader, granting=["3"])
    follower = new_core("2", term=3, log=FIGURE_7_FOLLOWERS["f"])

    persisted: dict[int, int] = {e.index: e.term for e in follower.log.entries}
    queue = deque(m for m in out if m.to == "2")
    while queue:
        m = queue.popleft()
        target = follower if m.to == "2" else leader
        target.step(m)
        rd = drain(target)
        if target is follower:
            for e in rd.entries:
                persisted = {i: t for i, t in persisted.items() if i < e.index}
                persisted[e.index] = e.term
            for ack in rd.messages:
                if isinstance(ack, AppendResponse) and not ack.reject:
                    assert all(i in persisted for i in range(1, ack.index + 1))
            assert not any(isinstance(x, AppendResponse) for x in rd.early_messages)
        queue.extend(x for x in sent(rd) if x.to in ("1", "2"))

    assert log_of(follower) == log_of(leader)
