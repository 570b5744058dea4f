"""The Raft loop's inbox: a plain heartbeat's answer waits for the loop's next wake-up.

It must not cost the leader its leadership: check-quorum still passes when every answer is
taken one heartbeat late, before the ticks of the next wake-up (and fails when they never
come, so the check below can fail). Anything else — another term, a read's heartbeat, a
follower's message — wakes the loop at once.
"""

from __future__ import annotations

import queue
import random

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


def _leader_a() -> RaftCore:
    core = elect(RaftCore(RaftConfig("a", ABC), rng=random.Random(0)))
    for follower in ("b", "c"):
        core.step(AppendResponse(1, follower, "a", index=1))
    drain(core)
    return core


def _heartbeat_rounds(core: RaftCore, rounds: int, *, answered: bool) -> None:
    """Run ``rounds`` heartbeats as the loop would with deferred answers: each wake-up first
    steps the answers to the previous heartbeat, then runs its ticks."""
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


def test_answers_taken_one_heartbeat_late_keep_the_leader() -> None:
    core = _leader_a()
    rounds = 10 * core.config.election_ticks // core.config.heartbeat_ticks
    _heartbeat_rounds(core, rounds, answered=True)
    assert core.role is Role.LEADER and core.term == 1


def test_without_answers_the_leader_steps_down() -> None:
    core = _leader_a()
    _heartbeat_rounds(core, 10 * core.config.election_ticks, answered=False)
    assert core.role is not Role.LEADER


@pytest.mark.parametrize(
    ("message", "leading", "waits"),
    [
        (HeartbeatResponse(1, "b", "a"), True, True),
        (HeartbeatResponse(1, "b", "a", context="a:3"), True, False),  # a read waits on it
        (HeartbeatResponse(2, "b", "a"), True, False),  # a later term: step down at once
        (HeartbeatResponse(1, "b", "a"), False, False),
        (AppendResponse(1, "b", "a", index=1), True, False),
        (Heartbeat(1, "b", "a", 0), True, False),
    ],
    ids=["plain", "read", "later-term", "not-leading", "append-response", "heartbeat"],
)
def test_only_a_plain_answer_of_the_leaders_term_may_wait(
    message: Message, leading: bool, waits: bool
) -> None:
    assert can_wait(message, 1, leading) is waits


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
