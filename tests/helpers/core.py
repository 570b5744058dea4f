"""Driving one :class:`~catga_sync.raft.RaftCore` by hand: play the driver, and tick a core
into a role within a bounded number of ticks (a core that never gets there fails the test
instead of hanging it)."""

from __future__ import annotations

from collections.abc import Callable

from catga_sync.raft import Message, RaftCore, ReadState, Role, VoteRequest, VoteResponse

MAX_TICKS = 1000
"""Far more ticks than any election of these tests takes (an election timeout is 10-20)."""


def drain(core: RaftCore) -> list[Message]:
    """Play the driver: take every Ready, pretend it was persisted, return what it sends."""
    return drain_reads(core)[0]


def drain_reads(core: RaftCore) -> tuple[list[Message], list[ReadState]]:
    """Like :func:`drain`; also return the reads the Readies release."""
    sent: list[Message] = []
    reads: list[ReadState] = []
    while core.has_ready():
        ready = core.ready()
        sent.extend(ready.early_messages)
        sent.extend(ready.messages)
        reads.extend(ready.read_states)
        core.advance(ready)
    return sent, reads


def tick_until(
    core: RaftCore, done: Callable[[RaftCore], bool], what: str, max_ticks: int = MAX_TICKS
) -> int:
    """Tick ``core`` until ``done(core)``; the ticks it took. Fails after ``max_ticks``."""
    for ticks in range(max_ticks + 1):
        if done(core):
            return ticks
        core.tick()
    raise AssertionError(f"{core.id}: {what} not reached in {max_ticks} ticks")


def elect(core: RaftCore, max_ticks: int = MAX_TICKS) -> RaftCore:
    """Tick ``core`` into leadership, granting every vote (and pre-vote) it asks for, then
    drain what it sends on taking office. Fails after ``max_ticks``."""
    for _ in range(max_ticks):
        if core.role is Role.LEADER:
            break
        core.tick()
        for m in drain(core):
            if isinstance(m, VoteRequest):
                core.step(VoteResponse(m.term, m.to, core.id, granted=True, pre_vote=m.pre_vote))
    if core.role is not Role.LEADER:
        raise AssertionError(f"{core.id} did not become leader in {max_ticks} ticks")
    drain(core)
    return core
