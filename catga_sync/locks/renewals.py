"""Renewals through one node, coalesced into shared log entries (group commit for leases).

Every held lease renews every third of its TTL. One entry per renewal made the renewal
traffic of a node linear in its leases: 10,000 leases with a 30 s TTL were 1,000 entries a
second, more than a small cluster commits while doing anything else, and leases started to
run out (``benchmarks/scale_locks.py``). Here, a renewal that comes while another is on its
way waits, and all that waited go together in the next ``renew_many`` entry — as the Raft loop
batches proposals, one level up. A lone renewal still goes at once, as one entry of one.

Each renewal gets its own answer: renewed, or :class:`~catga_sync.errors.LockNotHeldError`
when its grant no longer holds (the others in the entry are renewed all the same), or the
error of the whole entry (no leader, a commit timeout) when the entry failed. A holder counts
its lease from before it joined the queue, so the wait only makes it more careful.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CatgaError, CommitTimeoutError, LockNotHeldError
from .table import MAX_RENEWALS, LockTable

if TYPE_CHECKING:
    from ..runtime.extension import NodeHandle

__all__ = ["RenewalGroup"]


BATCH_BYTES = 16 << 10
"""JSON bytes of names in one entry at most: with base64 and the message around it, an entry
stays far below the smallest ``max_message_bytes`` (64 KiB) a cluster may set."""


@dataclass(slots=True)
class _Renewal:
    name: str
    token: int
    deadline: float
    """On ``time.monotonic()``: past it, its holder no longer wants the answer."""
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    drive: bool = False
    """Set with ``done`` when it is this renewal's thread that must send the next entry."""
    size: int = field(init=False)
    """Its share of an entry's bytes: the name as JSON, and room for the token."""

    def __post_init__(self) -> None:
        self.size = _share(self.name)


def _share(name: str) -> int:
    """A renewal's share of an entry's bytes: the name as JSON, and room for the token."""
    return len(json.dumps(name)) + 24


class RenewalGroup:
    """The renewals of the leases held through ``node`` (thread-safe)."""

    def __init__(self, node: NodeHandle) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._queue: list[_Renewal] = []
        self._sending = False
        self.entries = 0
        """``renew_many`` entries sent (for tests and benchmarks)."""
        self.renewals = 0
        """Renewals they carried."""

    def renew(self, name: str, token: int, timeout: float) -> None:
        """Renew the grant ``token`` of lock ``name``; CommitTimeoutError if that takes more
        than ``timeout`` seconds, waiting for its turn included."""
        mine = _Renewal(name, token, time.monotonic() + timeout)
        with self._lock:
            self._queue.append(mine)
            drive = not self._sending
            self._sending = True
        while True:
            if drive:
                self._send()
            elif not mine.done.wait(max(0.0, mine.deadline - time.monotonic())):
                with self._lock:
                    if mine in self._queue and not mine.drive:  # still waiting: give up on it
                        self._queue.remove(mine)
                        raise CommitTimeoutError(
                            f"the renewal of lock {name!r} (token {token}) waited "
                            f"{timeout:.2f}s for earlier ones and was not sent"
                        )
                # Taken into an entry meanwhile, whose own timeout is at most ours: its answer
                # comes about now (the margin covers the loop's hand-back).
                if not mine.done.wait(_ANSWER_MARGIN) and not mine.drive:
                    raise CommitTimeoutError(
                        f"the renewal of lock {name!r} (token {token}) was not answered "
                        f"within {timeout:.2f}s"
                    )
            if mine.drive and mine.error is None:
                mine.drive, drive = False, True
                mine.done.clear()
                continue
            if mine.error is not None:
                raise _own_copy(mine.error)
            return

    def renew_batch(
        self, grants: list[tuple[str, int]], timeout: float
    ) -> list[BaseException | None]:
        """Renew ``grants`` (``(name, token)`` pairs) in as few entries as their bounds allow,
        one after the other, all within ``timeout``: for each grant, None (renewed) or why
        not (a chunk left when the time is up is not sent). Never raises for a failed entry
        (its grants get its error). For the :class:`~catga_sync.locks.keeper.LeaseKeeper`,
        which is one thread: it needs no turn in the queue that :meth:`renew` waits in."""
        errors: list[BaseException | None] = []
        deadline = time.monotonic() + timeout
        start = 0
        while start < len(grants):
            end, size = start, 0
            while end < len(grants) and end - start < MAX_RENEWALS:
                share = _share(grants[end][0])
                if end > start and size + share > BATCH_BYTES:
                    break
                size += share
                end += 1
            chunk = grants[start:end]
            start = end
            left = deadline - time.monotonic()
            if left <= 0:  # the time is up for this chunk and those after it
                errors.extend(
                    CommitTimeoutError(f"the renewal of lock {name!r} timed out before it was sent")
                    for name, _ in grants[len(errors) :]
                )
                break
            try:
                table = self._node.state(LockTable, timeout=left)
                answers: list[dict[str, Any]] = table.renew_many([[n, t] for n, t in chunk])
                self.entries += 1
                self.renewals += len(chunk)
                errors.extend(
                    LockNotHeldError(answer["error"]) if "error" in answer else None
                    for answer in answers
                )
            except CatgaError as exc:
                errors.extend(_own_copy(exc) for _ in chunk)
        return errors

    def _take(self) -> list[_Renewal]:
        """The next entry's renewals: the oldest queued, within both bounds. Those past their
        deadline are answered with a timeout instead (their holders count them lost anyway)."""
        now = time.monotonic()
        batch: list[_Renewal] = []
        size = 0
        with self._lock:
            while self._queue and len(batch) < MAX_RENEWALS:
                renewal = self._queue[0]
                if batch and size + renewal.size > BATCH_BYTES:
                    break
                self._queue.pop(0)
                if renewal.deadline <= now:  # even the sender's own: it would fail the rest
                    renewal.drive = False
                    renewal.error = CommitTimeoutError(
                        f"the renewal of lock {renewal.name!r} timed out before it was sent"
                    )
                    renewal.done.set()
                    continue
                batch.append(renewal)
                size += renewal.size
        return batch

    def _send(self) -> None:
        """Send one entry with the oldest queued renewals, answer each, then hand the sending
        on to a renewal still waiting, or stop."""
        batch = self._take()
        try:
            if batch:
                timeout = max(0.001, min(r.deadline for r in batch) - time.monotonic())
                table = self._node.state(LockTable, timeout=timeout)
                answers: list[dict[str, Any]] = table.renew_many([[r.name, r.token] for r in batch])
                self.entries += 1
                self.renewals += len(batch)
                for renewal, answer in zip(batch, answers, strict=True):
                    if "error" in answer:
                        renewal.error = LockNotHeldError(answer["error"])
        except BaseException as exc:  # the entry failed (or a bug): every renewal in it did
            for renewal in batch:
                renewal.error = exc
            if not isinstance(exc, CatgaError):
                raise
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].drive = True  # its thread sends next, for all then queued
                    self._queue[0].done.set()
                else:
                    self._sending = False
            for renewal in batch:
                renewal.drive = False
                renewal.done.set()


_ANSWER_MARGIN = 1.0
"""Seconds a renewal taken into an entry waits past its own deadline for that entry's answer."""


def _own_copy(error: BaseException) -> BaseException:
    """``error`` for one waiter: an entry's failure is raised in every thread it failed, and
    one exception object raised in several threads at once mixes their tracebacks."""
    try:
        twin = copy.copy(error)
    except Exception:
        return error
    twin.__traceback__ = None
    twin.__cause__ = error.__cause__
    return twin
