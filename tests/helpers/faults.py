"""Faults for in-process clusters: a disk that fails on demand, and a memory network that drops
the messages a test picks (on top of :class:`~catga_sync.transport.memory.MemoryNetwork`'s own
cut links) and lets a test wait for a message to go through."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from catga_sync.errors import StorageError
from catga_sync.raft import Message
from catga_sync.storage.base import Storage
from catga_sync.transport.memory import MemoryNetwork

from .wrapping import StorageWrapper

__all__ = ["FailingStorage", "FaultyNetwork", "MessageWatch"]


class FailingStorage(StorageWrapper):
    """A :class:`~catga_sync.storage.base.Storage` whose ``persist()`` raises once told to (a
    full disk, a database gone away) or takes longer (a slow disk); until then it is the
    storage it wraps."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self._error: BaseException | None = None
        self._delay = 0.0
        self.failures = 0
        """persist() calls refused so far."""

    def fail(self, error: BaseException | None = None) -> None:
        """Make every later ``persist()`` raise ``error`` (a StorageError by default)."""
        self._error = error or StorageError(
            f"the disk of node {self.node_id!r} is full (a fault injected by the test)"
        )

    def recover(self) -> None:
        """Let ``persist()`` through again (the database is back)."""
        self._error = None

    def slow(self, seconds: float) -> None:
        """Make every later ``persist()`` take ``seconds`` longer (a slow disk; 0: not)."""
        self._delay = seconds

    def before_persist(self) -> None:
        if self._error is not None:
            self.failures += 1
            raise self._error
        if self._delay:
            time.sleep(self._delay)  # the fault itself: a disk this slow


class MessageWatch:
    """The messages that went through a :class:`FaultyNetwork` matching a predicate."""

    def __init__(self, predicate: Callable[[Message], bool]) -> None:
        self.predicate = predicate
        self.seen: list[Message] = []
        self._cond = threading.Condition()

    def offer(self, message: Message) -> None:
        if self.predicate(message):
            with self._cond:
                self.seen.append(message)
                self._cond.notify_all()

    def wait(self, timeout: float, what: str = "a matching message") -> Message:
        """The first matching message; fails when none went through within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.seen, timeout):
                raise AssertionError(f"no {what} went through in {timeout}s")
            return self.seen[0]


class FaultyNetwork(MemoryNetwork):
    """A :class:`MemoryNetwork` that also drops every message a rule matches, and reports the
    messages it delivers to watches."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._rules: list[Callable[[Message], bool]] = []
        self._watches: list[MessageWatch] = []
        self._faults = threading.Lock()
        self.dropped_by_rules = 0

    def drop(self, rule: Callable[[Message], bool]) -> Callable[[Message], bool]:
        """Drop every message ``rule(message)`` is true for, until :meth:`allow`."""
        with self._faults:
            self._rules.append(rule)
        return rule

    def allow(self, rule: Callable[[Message], bool]) -> None:
        with self._faults:
            self._rules.remove(rule)

    def watch(self, predicate: Callable[[Message], bool]) -> MessageWatch:
        """Collect the delivered messages ``predicate`` is true for, from now on."""
        watch = MessageWatch(predicate)
        with self._faults:
            self._watches.append(watch)
        return watch

    def deliver(self, sender_id: str, sender_name: str | None, messages: Sequence[Message]) -> int:
        with self._faults:
            rules, watches = list(self._rules), list(self._watches)
        if rules:
            kept = [m for m in messages if not any(rule(m) for rule in rules)]
            with self._faults:
                self.dropped_by_rules += len(messages) - len(kept)
            messages = kept
        delivered = super().deliver(sender_id, sender_name, messages)
        if delivered:
            for watch in watches:
                for message in messages:
                    watch.offer(message)
        return delivered
