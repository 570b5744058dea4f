"""What the Raft loop is handed, and the one kind of message that need not wake it.

Other threads talk to the loop through its :class:`Inbox`: peer messages, :class:`Call`,
:class:`Proposal`, reply slots, ``TICK`` and ``STOP``, each waking the loop. A leader's
heartbeat, though, comes back from every follower every heartbeat interval, and while that
follower is up to date all its answer does is mark it active for check-quorum. Such an answer
(:func:`can_wait`) waits in the inbox without waking the loop, which takes it first at its next
wake-up — the next heartbeat at the latest, before any tick of that wake-up runs, so
check-quorum counts it as before. Measured on an idle example cluster (``/proc`` per thread,
20 s, twice): a leader's loop 1.35 → 0.80–0.90% of a core, woken once per heartbeat instead of
once more per follower. An answer of a later term, to a read's heartbeat (a read waits on it),
from a follower that lags, is paused or takes over leadership wakes the loop as every other
message does.
"""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..raft import Message, RaftCore

__all__ = ["STOP", "TICK", "Call", "Inbox", "Proposal", "can_wait"]

TICK = object()
"""A wake-up: the loop runs whatever ticks are due after each batch."""
STOP = object()


@dataclass
class Call:
    """Run ``fn(core)`` on the loop, between two batches."""

    fn: Callable[[RaftCore], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class Proposal:
    """A command for the log; the loop appends all it drains in one go (``propose_many``). The
    future gets ``(index, term, result)`` once the entry is applied: set once, so that the
    proposer wakes once (a wake-up at the append too cost 16 proposers a GIL hand-off each)."""

    data: bytes
    future: Future[tuple[int, int, Any]] = field(default_factory=Future)
    created: float = field(default_factory=time.monotonic)


def can_wait(message: Message, core: RaftCore) -> bool:
    """Whether ``message`` may wait for the loop's next wake-up
    (``RaftCore.heartbeat_answer_can_wait``, asked from the thread that queues it)."""
    return core.heartbeat_answer_can_wait(message)


class Inbox:
    """A queue that wakes the loop, beside the answers that wait for its next wake-up."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._unhurried: collections.deque[Message] = collections.deque()

    def put(self, event: object) -> None:
        self._queue.put(event)

    def put_message(self, message: Message, core: RaftCore) -> None:
        """Queue a peer message for ``core``'s loop: it wakes the loop unless it can wait."""
        if can_wait(message, core):
            self._unhurried.append(message)
        else:
            self._queue.put(message)

    def get(self, timeout: float) -> Any:
        """The next event that wakes the loop; raises ``queue.Empty`` after ``timeout``."""
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> Any:
        return self._queue.get_nowait()

    def empty(self) -> bool:
        """Whether nothing waits that would wake the loop."""
        return self._queue.empty()

    def take_unhurried(self) -> Iterator[Message]:
        """The answers that waited, oldest first (a deque's ends are thread-safe)."""
        unhurried = self._unhurried
        while unhurried:
            yield unhurried.popleft()
