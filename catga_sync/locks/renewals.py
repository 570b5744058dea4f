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

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CatgaError, CommitTimeoutError, LockNotHeldError
from .table import MAX_RENEWALS, LockTable

if TYPE_CHECKING:
    from ..runtime.extension import NodeHandle

__all__ = ["RenewalGroup"]


@dataclass(slots=True)
class _Renewal:
    name: str
    token: int
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    drive: bool = False
    """Set with ``done`` when it is this renewal's thread that must send the next entry."""


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
        """Renew the grant ``token`` of lock ``name``, within ``timeout`` seconds."""
        mine = _Renewal(name, token, timeout)
        with self._lock:
            self._queue.append(mine)
            drive = not self._sending
            self._sending = True
        while True:
            if drive:
                self._send()
            elif not mine.done.wait(timeout):
                with self._lock:
                    if mine in self._queue and not mine.drive:  # still waiting: give up on it
                        self._queue.remove(mine)
                        raise CommitTimeoutError(
                            f"the renewal of lock {name!r} (token {token}) waited "
                            f"{timeout:.2f}s for an earlier one and was not sent"
                        )
                mine.done.wait()  # sent meanwhile: its entry's answer comes within its timeout
            if mine.drive and not mine.error:
                mine.drive, drive = False, True
                mine.done.clear()
                continue
            if mine.error is not None:
                raise mine.error
            return

    def _send(self) -> None:
        """Send one entry with everything queued (up to :data:`MAX_RENEWALS`), answer each,
        then hand the sending on to a renewal still waiting, or stop."""
        with self._lock:
            batch, self._queue = self._queue[:MAX_RENEWALS], self._queue[MAX_RENEWALS:]
        timeout = min(r.timeout for r in batch)
        try:
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
                renewal.done.set()
