"""What the Raft loop sends, and how: answers that ride on the peer request that is still open,
and commit notices held back a moment for an AppendEntries to carry them.

Only the Raft loop calls :class:`Outbox`, except :meth:`Outbox.abandon`, which the HTTP
handler thread of a timed-out peer request calls (hence the slot lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..raft import AppendEntries, Message
from ..transport.base import Transport
from .status import NodeStats

__all__ = ["Outbox", "ReplySlot"]


@dataclass
class ReplySlot:
    """An open peer request waiting for its answer: while it is open, what the loop sends to
    ``peer`` goes back in that request's response instead of a new request (one HTTP exchange
    per round trip, not two)."""

    peer: str
    messages: Sequence[Message]
    replies: list[Message] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False


class Outbox:
    """Sends the loop's messages through ``transport``, through open reply slots first."""

    def __init__(self, transport: Transport, stats: NodeStats, commit_notice_delay: float) -> None:
        self._transport = transport
        self._stats = stats
        self._delay = commit_notice_delay
        self._slots: dict[str, ReplySlot] = {}
        self._slot_lock = threading.Lock()
        self._parked: dict[str, tuple[AppendEntries, float]] = {}
        """Commit notices held back, by peer, with the time they must leave by."""

    # -- reply slots --------------------------------------------------------------------------

    def open_slot(self, slot: ReplySlot) -> None:
        """From now until :meth:`close_slots`, messages for ``slot.peer`` go into ``slot``."""
        previous = self._slots.get(slot.peer)
        if previous is not None:
            previous.done.set()
        self._slots[slot.peer] = slot

    @property
    def has_open_slots(self) -> bool:
        return bool(self._slots)

    def close_slots(self) -> None:
        """Answer every open request with what it collected: once the Ready holding the
        answers was persisted and sent, and at the end of every batch."""
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            slot.done.set()

    def abandon(self, slot: ReplySlot) -> None:
        """The request behind ``slot`` timed out: what it collected goes out as requests, and so
        does whatever would have joined it."""
        with self._slot_lock:
            slot.abandoned = True
            replies, slot.replies = slot.replies, []
        if replies:
            self._transport.send(replies)

    # -- commit notices -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the earliest held-back commit notice must leave (None: none is held)."""
        if not self._parked:
            return None
        return min(deadline for _, deadline in self._parked.values())

    def flush_due(self, now: float) -> None:
        """Send the held-back commit notices whose time is up."""
        if not self._parked:
            return
        due = [peer for peer, (_, deadline) in self._parked.items() if deadline <= now]
        if due:
            self._deliver([self._parked.pop(peer)[0] for peer in due])

    def clear(self) -> None:
        """The node stops or failed: answer open requests, forget what is held."""
        self.close_slots()
        self._parked.clear()

    # -- sending ------------------------------------------------------------------------------

    def send(self, messages: Sequence[Message]) -> None:
        """Send ``messages``; those for a peer whose request is open go back in its response,
        and a commit notice waits a moment for an AppendEntries to ride on."""
        self._deliver(self._park_commit_notices(messages))

    def _park_commit_notices(self, messages: Sequence[Message]) -> Sequence[Message]:
        """Hold each AppendEntries without entries (the leader telling a follower the new
        commit index) for up to the commit-notice delay: the next proposal's AppendEntries,
        which carries the same commit index, usually comes sooner and makes it redundant. Under
        a stream of commands this halves the requests per command; a follower learns a commit
        at most that much later. Raft allows it: a delayed or dropped message is safe."""
        parked = self._parked
        if not parked and not any(type(m) is AppendEntries and not m.entries for m in messages):
            return messages
        out: list[Message] = []
        now = time.monotonic()
        for message in messages:
            if type(message) is not AppendEntries:
                out.append(message)
                continue
            held = parked.pop(message.to, None)
            if not message.entries:  # a newer notice replaces an older one, keeping its clock
                parked[message.to] = (message, held[1] if held else now + self._delay)
                self._stats.commit_notices_parked += 1
                continue
            if held is not None and (
                held[0].term != message.term or held[0].commit > message.commit
            ):
                out.append(held[0])  # not covered by this one: it still goes, first
            elif held is not None:
                self._stats.commit_notices_saved += 1
            out.append(message)
        return out

    def _deliver(self, messages: Sequence[Message]) -> None:
        slots = self._slots
        if slots:
            rest = []
            with self._slot_lock:
                for message in messages:
                    slot = slots.get(message.to)
                    if slot is not None and not slot.abandoned:
                        slot.replies.append(message)
                        self._stats.inline_replies += 1
                    else:
                        rest.append(message)
            messages = rest
        if messages:
            self._transport.send(messages)
