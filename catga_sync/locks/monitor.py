"""The lease clock: one :class:`LeaseMonitor` per node, outside the replicated state.

As this node applies grants and renewals the monitor notes each lease's deadline on this
node's monotonic clock (apply time + TTL); the leader proposes ``expire`` once a deadline
passes. A node that becomes leader restarts every deadline at its election (now + TTL), so a
failover never cuts a lease short. The monitor also wakes this node's waiters and tells its
holders when a lease is gone.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import NotRegisteredError
from ..runtime.extension import Extension
from ..runtime.leadership import LeadershipChange, LeadershipWatch
from .keeper import LeaseKeeper
from .renewals import RenewalGroup
from .table import LockTable

if TYPE_CHECKING:
    from ..runtime.extension import NodeHandle

log = logging.getLogger("catga_sync.locks")  # the package's logger, as before it was split

WAIT_GRACE = 2.0
"""A queued waiter whose wait passed this long ago (its process died) is dropped by the leader."""
RETRY_DELAY = 0.2
"""Seconds before the leader proposes a failed expiry again, or a holder retries a renewal."""


@dataclass(slots=True)
class Expiry:
    """What the leader proposes when a deadline passes: ``expire(name, token, since)`` for a
    lease (``kind="lease"``), ``cancel(name, holder, waiting_only=True)`` for a waiter."""

    kind: str
    name: str
    token: int = 0
    since: int = 0
    holder: str = ""


@dataclass(slots=True)
class _Deadline:
    expiry: Expiry
    period: float
    """The TTL of a lease; the wait (plus grace) of a waiter."""
    at: float
    seq: int = 0
    """The heap entry that stands for this deadline (older ones are skipped)."""


class _Signal(threading.Event):
    """An event that also calls ``on_set`` when set: how the lease keeper hears of a watch."""

    def __init__(self) -> None:
        super().__init__()
        self.on_set: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        on_set = self.on_set
        if on_set is not None:
            on_set()


class _Watch:
    """This node's view of one acquisition, updated on the Raft loop: ``pending`` (asked or
    queued), ``granted`` (with ``token``), ``freed`` or ``cancelled`` (with ``reason``)."""

    __slots__ = ("event", "holder", "reason", "state", "token")

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.state = "pending"
        self.token = 0
        self.reason = ""
        self.event = _Signal()


class LeaseMonitor(Extension):
    """Lease deadlines on this node's monotonic clock, and this node's waiters and holders.

    The lock service of a node: an extension (``node.extensions["locks"]``, installed by
    ``ClusterNode``) that registers the :class:`~catga_sync.locks.table.LockTable` it feeds on.

    Fed by the :class:`~catga_sync.locks.table.LockTable` as entries are applied here (on the
    Raft loop, so every method it calls only updates a table and sets events). On the leader,
    one thread sleeps until the next deadline and proposes the expiry; the thread starts when
    the node first leads and stops with the node. ``clock`` is injected for tests, and
    ``run_thread=False`` leaves the proposing to whoever calls :meth:`due`.
    """

    name = "locks"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        run_thread: bool = True,
    ) -> None:
        self._node: NodeHandle | None = None
        self.clock = clock
        self._run_thread = run_thread
        self._cond = threading.Condition()
        self._deadlines: dict[tuple[str, str, str], _Deadline] = {}
        """("lease", name, "") or ("waiter", name, holder) -> its deadline."""
        self._heap: list[tuple[float, int, tuple[str, str, str]]] = []
        self._seq = itertools.count(1)
        self._leading = False
        self._running = False
        self._thread: threading.Thread | None = None
        self._watches: dict[str, _Watch] = {}

    # -- fed by the lock table (on the Raft loop) --------------------------------------------

    def granted(self, name: str, lock: dict[str, Any]) -> None:
        expiry = Expiry("lease", name, token=lock["token"], since=lock["since"])
        with self._cond:
            self._forget(("waiter", name, lock["holder"]))
            self._set(("lease", name, ""), expiry, lock["ttl"])
            watch = self._watches.get(lock["holder"])
        if watch is not None:
            watch.token = lock["token"]
            watch.state = "granted"
            watch.event.set()

    def renewed(self, name: str, lock: dict[str, Any]) -> None:
        expiry = Expiry("lease", name, token=lock["token"], since=lock["since"])
        with self._cond:
            self._set(("lease", name, ""), expiry, lock["ttl"])

    def freed(self, name: str, lock: dict[str, Any], reason: str) -> None:
        with self._cond:
            self._forget(("lease", name, ""))
            watch = self._watches.get(lock["holder"])
        if watch is not None:
            watch.reason = f"lock {name!r} (token {lock['token']}) was {reason}"
            watch.state = "freed"
            watch.event.set()

    def queued(self, name: str, waiter: dict[str, Any]) -> None:
        expiry = Expiry("waiter", name, holder=waiter["holder"])
        with self._cond:
            self._set(("waiter", name, waiter["holder"]), expiry, waiter["wait"] + WAIT_GRACE)

    def dequeued(self, name: str, waiter: dict[str, Any], reason: str) -> None:
        with self._cond:
            self._forget(("waiter", name, waiter["holder"]))
            watch = self._watches.get(waiter["holder"])
        if watch is not None:
            watch.reason = f"the request for lock {name!r} was {reason}"
            watch.state = "cancelled"
            watch.event.set()

    def restored(self, locks: dict[str, dict[str, Any]]) -> None:
        """A snapshot replaced the table: every deadline starts again now (never earlier)."""
        with self._cond:
            self._deadlines.clear()
            self._heap.clear()
            waiting: dict[str, str] = {}
            for name, lock in locks.items():
                expiry = Expiry("lease", name, token=lock["token"], since=lock["since"])
                self._set(("lease", name, ""), expiry, lock["ttl"])
                for waiter in lock["waiters"]:
                    holder = waiter["holder"]
                    waiting[holder] = name
                    expiry = Expiry("waiter", name, holder=holder)
                    self._set(("waiter", name, holder), expiry, waiter["wait"] + WAIT_GRACE)
            holders = {lock["holder"]: (name, lock) for name, lock in locks.items()}
            watches = list(self._watches.values())
            self._cond.notify_all()
        for watch in watches:
            held = holders.get(watch.holder)
            if held is not None and watch.state == "pending":
                self.granted(*held)
            elif held is not None and watch.token == held[1]["token"]:
                continue  # still holding
            elif watch.holder not in waiting and watch.state in ("pending", "granted"):
                self._lose(watch)

    def _lose(self, watch: _Watch) -> None:
        watch.reason = "the lock changed hands while this node caught up from a snapshot"
        watch.state = "freed" if watch.state == "granted" else "cancelled"
        watch.event.set()

    # -- the extension ---------------------------------------------------------------------

    def install(self, node: NodeHandle) -> None:
        self._node = node
        self.renewals = RenewalGroup(node)
        """This node's lease renewals, coalesced into shared entries."""
        self.keeper = LeaseKeeper(
            f"catga-lease-keeper-{node.node_id}",
            self.renewals,
            lambda: self.clock(),  # read when used: tests set a clock of their own after install
        )
        """The thread that renews this node's leases and tells when one is lost."""
        self.table = LockTable(self)
        node.register(self.table)
        LeadershipWatch(node, self.on_leadership)

    def describe(self) -> dict[str, Any]:
        return {}  # the locks are in the replicated table: GET /locks/<name> in the example

    # -- leadership (on the Raft loop) -------------------------------------------------------

    def on_leadership(self, change: LeadershipChange) -> None:
        if change.stopped:  # this node's waiters and holders are cut off
            with self._cond:
                watches = list(self._watches.values())
            for watch in watches:
                watch.reason = f"node {change.status.node_id} stopped"
                watch.state = "freed" if watch.state == "granted" else "cancelled"
                watch.event.set()
        with self._cond:
            self._running = not change.stopped
            if change.elected:  # a new leadership (perhaps in a newer term): clocks restart
                self._restart_clocks()
                if self._thread is None and self._run_thread and self._running:
                    self._thread = threading.Thread(
                        target=self._run, name=f"catga-leases-{change.status.node_id}", daemon=True
                    )
                    self._thread.start()
            self._leading = change.leading is not None
            self._cond.notify_all()

    def _restart_clocks(self) -> None:
        """A new leader restarts every lease at its election: now + TTL, never shorter."""
        now = self.clock()
        self._heap.clear()
        for key, deadline in self._deadlines.items():
            deadline.at = max(deadline.at, now + deadline.period)
            deadline.seq = next(self._seq)
            self._heap.append((deadline.at, deadline.seq, key))
        heapq.heapify(self._heap)

    # -- deadlines -----------------------------------------------------------------------------

    def _set(self, key: tuple[str, str, str], expiry: Expiry, period: float) -> None:
        at = self.clock() + period
        current = self._deadlines.get(key)
        if current is not None and current.expiry == expiry:
            at = max(at, current.at)  # never shorten
        deadline = _Deadline(expiry, period, at, next(self._seq))
        self._deadlines[key] = deadline
        if self._leading:  # a follower keeps no heap: it has no thread to pop it
            heapq.heappush(self._heap, (at, deadline.seq, key))
            if self._heap[0][1] == deadline.seq:  # the earliest now: wake the thread
                self._cond.notify_all()

    def _forget(self, key: tuple[str, str, str]) -> None:
        self._deadlines.pop(key, None)

    def deadline(self, name: str) -> float | None:
        """When this node would expire the lease on ``name`` (its monotonic clock), or None."""
        with self._cond:
            found = self._deadlines.get(("lease", name, ""))
            return None if found is None else found.at

    def due(self, now: float | None = None) -> list[Expiry]:
        """The expiries whose deadline has passed at ``now``, each rescheduled ``RETRY_DELAY``
        later in case its proposal fails (an applied expiry forgets it). Leader only."""
        now = self.clock() if now is None else now
        found: list[Expiry] = []
        with self._cond:
            if not self._leading:
                return found
            heap = self._heap
            while heap and heap[0][0] <= now:
                _, seq, key = heapq.heappop(heap)
                deadline = self._deadlines.get(key)
                if deadline is None or deadline.seq != seq:
                    continue  # renewed, freed or restarted since
                found.append(deadline.expiry)
                deadline.at = now + RETRY_DELAY
                deadline.seq = next(self._seq)
                heapq.heappush(heap, (deadline.at, deadline.seq, key))
        return found

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._running:
                        self._thread = None
                        return
                    expiries = self.due() if self._leading else []
                    if expiries:
                        break
                    timeout = None
                    if self._leading and self._heap:
                        timeout = max(0.0, self._heap[0][0] - self.clock())
                    self._cond.wait(timeout)
            for expiry in expiries:
                self._propose(expiry)

    def _propose(self, expiry: Expiry) -> None:
        node = self._node
        assert node is not None  # the thread runs on an installed monitor only
        try:
            table = node.state(LockTable, timeout=max(1.0, RETRY_DELAY * 10))
            if expiry.kind == "lease":
                freed = table.expire(expiry.name, expiry.token, expiry.since)
                if freed:
                    log.info(
                        "node %s: lease on lock %r (token %d) expired",
                        node.node_id,
                        expiry.name,
                        expiry.token,
                    )
            else:
                table.cancel(expiry.name, expiry.holder, waiting_only=True)
        except Exception as exc:  # not the leader any more, no quorum: retried or moot
            log.debug("node %s: expiry %s not applied: %s", node.node_id, expiry, exc)

    # -- watches (for this node's acquisitions) ---------------------------------------------------

    def watch(self, holder: str) -> _Watch:
        watch = _Watch(holder)
        with self._cond:
            self._watches[holder] = watch
        return watch

    def unwatch(self, holder: str) -> None:
        with self._cond:
            self._watches.pop(holder, None)


def install_lock_table(node: NodeHandle) -> LockTable:
    """Install the lock service on ``node`` (ClusterNode does) and return its lock table."""
    return node.add_extension(LeaseMonitor()).table


def _monitor_of(node: NodeHandle) -> LeaseMonitor:
    monitor = node.extensions.get(LeaseMonitor.name)
    if not isinstance(monitor, LeaseMonitor):
        raise NotRegisteredError(f"node {node.node_id} has no lock table (is it a ClusterNode?)")
    return monitor
