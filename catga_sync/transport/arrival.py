"""Putting a peer's pipelined requests back in the order it sent them.

A sender with ``pipeline_depth`` > 1 keeps that many POSTs in flight to one peer, each on its
own connection, so that a follower's slow fsync of one batch does not hold the next one at the
leader: the next batch reaches the follower's loop while the first is on disk, and joins its
next persist. Two connections are served by two server threads, though, and the second
request can reach the loop first. Raft stays safe either way (a follower refuses an append
whose predecessor it lacks), but every such refusal costs a probe round and empties the
pipeline. So each request carries its place in its sender's stream
(``X-Catga-Stream: <stream>:<seq>``, :data:`~catga_sync.transport.wire.HEADER_STREAM`), and a
request waits here, briefly, until the ones before it have been queued.

The wait is bounded (:data:`MAX_WAIT`): a predecessor that never comes (its POST failed on the
way, or this node restarted mid-stream) costs one short wait, after which the stream moves on
past it. A request without the header (a sender with one request in flight, an older node)
waits for nothing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

__all__ = ["MAX_WAIT", "ArrivalOrder", "Turn", "parse_stream"]

MAX_WAIT = 0.05
"""Seconds a request waits at most for its predecessors: far longer than two server threads
take to parse two requests apart, even on a loaded machine, and a third of the shortest
election timeout. Only a predecessor lost on the way makes anyone wait this long."""

_MAX_STREAMS = 64
"""Streams remembered at once; the least recently heard is forgotten first (a forgotten
stream's next request waits once, as after a restart)."""


def parse_stream(value: str | None) -> tuple[str, int] | None:
    """``"<stream>:<seq>"`` as (stream, seq); None when absent or malformed (then unordered)."""
    if not value:
        return None
    stream, sep, seq = value.rpartition(":")
    if not sep or not stream or not seq.isdigit() or len(seq) > 18:
        return None
    return stream, int(seq)


class _Stream:
    __slots__ = ("done", "next")

    def __init__(self, first: int) -> None:
        self.next = first
        """The lowest sequence number not yet queued."""
        self.done: set[int] = set()
        """Numbers above ``next`` queued already (they went ahead after a wait ran out)."""

    def release(self, seq: int) -> None:
        if seq < self.next:
            return
        self.done.add(seq)
        while self.next in self.done:
            self.done.discard(self.next)
            self.next += 1


class Turn:
    """One request's place: :meth:`wait` for the ones before it, :meth:`release` once its
    messages are queued (idempotent; also what ``with`` does on the way out)."""

    __slots__ = ("_key", "_order", "_released", "_seq")

    def __init__(self, order: ArrivalOrder | None, key: tuple[str, str], seq: int) -> None:
        self._order = order
        self._key = key
        self._seq = seq
        self._released = order is None

    @property
    def ordered(self) -> bool:
        """Whether the request carried a stream header (its sender pipelines)."""
        return self._order is not None

    def wait(self, timeout: float = MAX_WAIT) -> bool:
        """Block until every earlier request of the stream was queued; False if ``timeout``
        ran out first (the request then goes ahead anyway)."""
        if self._order is None:
            return True
        return self._order._wait(self._key, self._seq, timeout)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        assert self._order is not None
        self._order._release(self._key, self._seq)

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_UNORDERED = Turn(None, ("", ""), 0)


class ArrivalOrder:
    """The streams of every sender this node hears from (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._streams: OrderedDict[tuple[str, str], _Stream] = OrderedDict()
        self.waits = 0
        """Requests that had to wait for a predecessor."""
        self.timeouts = 0
        """Waits that ran out (a predecessor lost on the way)."""

    def turn(self, sender: str, header: str | None) -> Turn:
        """The turn of a request from ``sender`` whose stream header is ``header``."""
        place = parse_stream(header)
        if place is None:
            return _UNORDERED
        return Turn(self, (sender, place[0]), place[1])

    def _stream(self, key: tuple[str, str]) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            # Streams start at 1; a later first number means this node restarted mid-stream,
            # and waiting once (then moving on) costs little.
            stream = self._streams[key] = _Stream(1)
            while len(self._streams) > _MAX_STREAMS:
                self._streams.popitem(last=False)
                self._cond.notify_all()  # a request waiting on it stops waiting
        self._streams.move_to_end(key)
        return stream

    def _wait(self, key: tuple[str, str], seq: int, timeout: float) -> bool:
        with self._cond:
            stream = self._stream(key)
            if seq <= stream.next:
                return True
            self.waits += 1
            deadline = time.monotonic() + timeout
            while seq > stream.next:
                if self._streams.get(key) is not stream:
                    return True  # forgotten meanwhile (64 other streams): nothing to wait for
                left = deadline - time.monotonic()
                if left <= 0:
                    self.timeouts += 1
                    # Give up on the missing ones: later requests must not wait for them too.
                    stream.done = {n for n in stream.done if n > seq}
                    stream.next = seq
                    return False
                self._cond.wait(left)
            return True

    def _release(self, key: tuple[str, str], seq: int) -> None:
        with self._cond:
            self._stream(key).release(seq)
            self._cond.notify_all()
