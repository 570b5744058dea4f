"""The Raft loop's inbox: a plain heartbeat's answer waits for the loop's next wake-up.

It must not cost the leader its leadership: check-quorum still passes when every answer is
taken one wake-up late, at the tightest ratios of election timeout to heartbeat (and fails
when they never come, so the check below can fail). Anything else — another term, a read's
heartbeat, a follower that lags, is paused or takes over — wakes the loop at once.
"""

from __future__ import annotations

import queue
import random
from collections.abc import Callable

import pytest
from helpers.core import drain, elect

from catga_sync.raft import (
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    Membership,
    Message,
    RaftConfig,
    RaftCore,
    Role,
)
from catga_sync.runtime.inbox import Inbox, can_wait

ABC = Membership(frozenset("abc"))


def _leader_a(election_ticks: int = 10, heartbeat_ticks: int = 1) -> RaftCore:
    config = RaftConfig("a", ABC, election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks)
    core = elect(RaftCore(config, rng=random.Random(0)))
    for follower in ("b", "c"):
        core.step(AppendResponse(1, follower, "a", index=1))
    drain(core)
    return core


def _heartbeat_rounds(core: RaftCore, rounds: int, *, answered: bool) -> None:
    """Run ``rounds`` wake-ups as the loop does with deferred answers: each steps the answers
    to the previous wake-up's heartbeats first, then runs its ticks."""
    waiting: list[Message] = []
    for _ in range(rounds):
        for message in waiting:
            core.step(message)
        waiting = []
        for _ in range(core.ticks_until_due()):
            core.tick()
        for sent in drain(core):
            if isinstance(sent, Heartbeat) and answered:
                waiting.append(HeartbeatResponse(sent.term, sent.to, "a", sent.context))


@pytest.mark.parametrize(("election", "heartbeat"), [(10, 1), (3, 2), (2, 1)])
def test_answers_taken_one_heartbeat_late_keep_the_leader(election: int, heartbeat: int) -> None:
    # (3, 2) and (2, 1): a quorum check after every heartbeat or two, the tightest there are.
    core = _leader_a(election_ticks=election, heartbeat_ticks=heartbeat)
    _heartbeat_rounds(core, 20 * election, answered=True)
    assert core.role is Role.LEADER and core.term == 1


@pytest.mark.parametrize(("election", "heartbeat"), [(10, 1), (2, 1)])
def test_without_answers_the_leader_steps_down(election: int, heartbeat: int) -> None:
    core = _leader_a(election_ticks=election, heartbeat_ticks=heartbeat)
    _heartbeat_rounds(core, 20 * election, answered=False)
    assert core.role is not Role.LEADER


def _lagging_b(core: RaftCore) -> RaftCore:
    core.propose(b"x")
    drain(core)  # b has not acknowledged entry 2
    return core


def _paused_b(core: RaftCore) -> RaftCore:
    core.progress["b"].probe_sent = True
    core.progress["b"].become_probe()
    core.progress["b"].probe_sent = True
    return core


def _taking_over_b(core: RaftCore) -> RaftCore:
    core.transfer_leadership("b")
    drain(core)
    return core


@pytest.mark.parametrize(
    ("message", "leader", "waits"),
    [
        (HeartbeatResponse(1, "b", "a"), _leader_a, True),
        (HeartbeatResponse(1, "b", "a", context="a:3"), _leader_a, False),  # a read waits
        (HeartbeatResponse(2, "b", "a"), _leader_a, False),  # a later term: step down now
        (HeartbeatResponse(1, "b", "a"), lambda: _lagging_b(_leader_a()), False),
        (HeartbeatResponse(1, "c", "a"), lambda: _lagging_b(_leader_a()), False),
        (HeartbeatResponse(1, "b", "a"), lambda: _paused_b(_leader_a()), False),
        (HeartbeatResponse(1, "c", "a"), lambda: _paused_b(_leader_a()), True),
        (HeartbeatResponse(1, "b", "a"), lambda: _taking_over_b(_leader_a()), False),
        (AppendResponse(1, "b", "a", index=1), _leader_a, False),
    ],
    ids=[
        "plain",
        "read",
        "later-term",
        "lagging",
        "lagging-too",
        "paused",
        "other-not-paused",
        "taking-over",
        "append-response",
    ],
)
def test_only_a_plain_answer_from_an_up_to_date_follower_may_wait(
    message: Message, leader: Callable[[], RaftCore], waits: bool
) -> None:
    assert can_wait(message, leader()) is waits


def test_a_follower_never_lets_an_answer_wait() -> None:
    follower = RaftCore(RaftConfig("b", ABC), rng=random.Random(0))
    follower.step(Heartbeat(1, "a", "b", 0))
    drain(follower)
    assert not can_wait(HeartbeatResponse(1, "c", "b"), follower)


def test_a_waiting_answer_wakes_nobody_and_comes_first_at_the_next_wake_up() -> None:
    core = _leader_a()
    inbox = Inbox()
    plain = HeartbeatResponse(1, "b", "a")
    later = HeartbeatResponse(2, "c", "a")
    inbox.put_message(plain, core)
    with pytest.raises(queue.Empty):
        inbox.get(timeout=0.05)
    inbox.put_message(later, core)
    assert inbox.get(timeout=1) is later
    assert list(inbox.take_unhurried()) == [plain]
    assert list(inbox.take_unhurried()) == []
