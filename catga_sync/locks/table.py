"""Distributed locks with fencing tokens, replicated through the Raft log.

::

    with cluster.lock("nightly-report", ttl=30) as lease:
        write_report(fence=lease.token)

A lock is a row of :class:`LockTable`, a replicated state machine every node registers. Acquire
it from any node (a follower forwards the command to the leader); the grant carries a **fencing
token**, the log index of the entry that granted it, so tokens only ever increase. The lease
lasts ``ttl`` seconds on the leader's monotonic clock and is renewed automatically while its
holder lives; a holder that dies, or pauses past its TTL, loses the lock to the next waiter
(first come, first served). A paused holder cannot know it was paused, so pass the token to
whatever the lock protects and let it refuse older tokens (:mod:`catga_sync.fencing`).

Three parts, top to bottom:

- :class:`LockTable`, the replicated state: pure and deterministic like every state machine. It
  reads no clock; the token is :attr:`~catga_sync.fsm.StateMachine.entry_index`.
- :class:`LeaseMonitor`, one per node, outside the replicated state. As this node applies
  grants and renewals it notes each lease's deadline on this node's monotonic clock (apply time
  + TTL); the leader proposes ``expire`` once a deadline passes. A node that becomes leader
  restarts every deadline at its election (now + TTL), so a failover never cuts a lease short.
  It also wakes this node's waiters and tells its holders when a lease is gone.
- :class:`Lease`, the holder's handle: the token, :meth:`Lease.is_valid`, renewal, release.

Why two holders are never valid at once: a holder counts its lease from the moment it *sent*
the request that the cluster applied last for it (the acquire, or the latest renewal), and
gives it ``ttl × (1 - CLOCK_DRIFT)``. Every node counts the same lease from when it *applied*
that entry, or from its own election, both later; and ``expire(name, token, since)`` frees a
lock only if no renewal (``since``, the index of the last grant or renewal) was applied since
the leader decided. So the next grant comes after the first holder's :meth:`Lease.is_valid`
turned false, provided the machines' clocks run at the same rate within ``CLOCK_DRIFT``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from .errors import (
    CatgaError,
    CommitTimeoutError,
    InvalidLockRequestError,
    LockNotAcquiredError,
    LockNotHeldError,
)
from .fsm import StateMachine, command, query

if TYPE_CHECKING:
    from types import TracebackType

    from .coordinator import ClusterCoordinator
    from .node import ClusterNode, NodeStatus

log = logging.getLogger("catga_sync.locks")

DEFAULT_TTL = 30.0
"""Seconds a lease lasts without renewal (renewed every third of it while held)."""
MIN_TTL = 0.1
MAX_TTL = 86_400.0
MAX_WAIT = 86_400.0
"""The longest wait in a lock's queue; ``timeout=None`` waits this long."""
MAX_NAME = 256
MAX_OWNER = 256
MAX_HOLDER = 64
MAX_WAITERS = 1024
"""Waiters queued on one lock; more are refused (the lock is busy)."""
CLOCK_DRIFT = 0.01
"""How much faster a holder's clock may run than the leader's: a holder believes in its lease
for ``ttl × (1 - CLOCK_DRIFT)`` only (Redlock uses the same 1%)."""
WAIT_GRACE = 2.0
"""A queued waiter whose wait passed this long ago (its process died) is dropped by the leader."""
RETRY_DELAY = 0.2
"""Seconds before the leader proposes a failed expiry again, or a holder retries a renewal."""


# --------------------------------------------------------------------------------------------
# Validation: on the client before anything is proposed, and again in apply.


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidLockRequestError(f"a lock name must be a non-empty string, not {name!r}")
    if len(name) > MAX_NAME:
        raise InvalidLockRequestError(
            f"a lock name has at most {MAX_NAME} characters; this one has {len(name)} "
            "(hash long keys into a shorter name)"
        )
    if not name.isprintable():
        raise InvalidLockRequestError(
            f"a lock name must be printable text (no NUL or control characters): {name!r}"
        )
    return name


def check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER:
        raise InvalidLockRequestError(
            f"a lock owner must be a non-empty string of at most {MAX_OWNER} characters, "
            f"not {owner!r}"
        )
    if not owner.isprintable():
        raise InvalidLockRequestError(f"a lock owner must be printable text: {owner!r}")
    return owner


def check_holder(holder: object) -> str:
    if not isinstance(holder, str) or not holder or len(holder) > MAX_HOLDER:
        raise InvalidLockRequestError(
            f"a holder id must be a non-empty string of at most {MAX_HOLDER} characters, "
            f"not {holder!r}"
        )
    return holder


def check_ttl(ttl: object) -> float:
    if not _is_number(ttl) or not MIN_TTL <= ttl <= MAX_TTL:  # NaN fails both comparisons
        raise InvalidLockRequestError(
            f"a lock TTL must be a number of seconds from {MIN_TTL:g} to {MAX_TTL:g}, not {ttl!r}"
        )
    return float(ttl)


def check_wait(wait: object) -> float:
    if not _is_number(wait) or not 0 <= wait <= MAX_WAIT:
        raise InvalidLockRequestError(
            f"a lock wait must be a number of seconds from 0 to {MAX_WAIT:g} (or None on the "
            f"client: wait as long as it takes), not {wait!r}"
        )
    return float(wait)


def check_token(token: object) -> int:
    if not isinstance(token, int) or isinstance(token, bool) or token <= 0:
        raise InvalidLockRequestError(
            f"a fencing token is a positive integer (Lease.token), not {token!r}"
        )
    return token


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# The replicated lock table


class LockListener(Protocol):
    """What a :class:`LockTable` reports as it applies entries (on the Raft loop: no blocking).

    ``lock`` is the table's record: ``token``, ``holder``, ``owner``, ``ttl``, ``since``,
    ``granted_at`` and ``waiters``. Read it there and then; do not keep or change it."""

    def granted(self, name: str, lock: dict[str, Any]) -> None: ...

    def renewed(self, name: str, lock: dict[str, Any]) -> None: ...

    def freed(self, name: str, lock: dict[str, Any], reason: str) -> None: ...

    def queued(self, name: str, waiter: dict[str, Any]) -> None: ...

    def dequeued(self, name: str, waiter: dict[str, Any], reason: str) -> None: ...

    def restored(self, locks: dict[str, dict[str, Any]]) -> None: ...


class LockTable(StateMachine):
    """The cluster's locks: who holds each, with which fencing token, and who waits, in order.

    Registered on every node by :class:`~catga_sync.node.ClusterNode`; use it through
    :func:`acquire`, :func:`lock`, ``cluster.lock(...)`` or :class:`DistributedLock` rather than
    calling its commands. A lock that is free and has no waiters has no row.
    """

    name = "catga.locks"

    def __init__(self, listener: LockListener | None = None) -> None:
        self.locks: dict[str, dict[str, Any]] = {}
        self._listener = listener

    @property
    def listener(self) -> LockListener | None:
        """Who hears about grants and releases on this node (its :class:`LeaseMonitor`)."""
        return self._listener

    # -- commands ----------------------------------------------------------------------------

    @command
    def acquire(
        self, name: str, holder: str, owner: str, ttl: float, wait: float = 0.0
    ) -> dict[str, Any]:
        """Grant ``name`` to ``holder`` if it is free; else queue it for up to ``wait`` seconds
        (0: do not queue). Returns ``{"state": "granted", "token", "owner", "ttl"}``,
        ``{"state": "queued", "position"}`` or ``{"state": "busy", "token", "owner"}``."""
        check_name(name)
        check_holder(holder)
        check_owner(owner)
        ttl = check_ttl(ttl)
        wait = check_wait(wait)
        lock = self.locks.get(name)
        if lock is None:
            return self._grant(name, {"holder": holder, "owner": owner, "ttl": ttl}, [])
        if lock["holder"] == holder:
            return _granted(lock)
        for position, waiter in enumerate(lock["waiters"], start=1):
            if waiter["holder"] == holder:
                return {"state": "queued", "position": position}
        if wait <= 0 or len(lock["waiters"]) >= MAX_WAITERS:
            busy = {"state": "busy", "token": lock["token"], "owner": lock["owner"]}
            if wait > 0:
                busy["reason"] = f"{MAX_WAITERS} waiters are queued already"
            return busy
        waiter = {"holder": holder, "owner": owner, "ttl": ttl, "wait": wait}
        lock["waiters"].append(waiter)
        if self._listener is not None:
            self._listener.queued(name, waiter)
        return {"state": "queued", "position": len(lock["waiters"])}

    @command
    def renew(self, name: str, token: int) -> dict[str, Any]:
        """Restart the lease of the grant ``token``; LockNotHeldError if it no longer holds."""
        check_name(name)
        check_token(token)
        lock = self._held(name, token)
        lock["since"] = self.entry_index
        if self._listener is not None:
            self._listener.renewed(name, lock)
        return {"token": token, "ttl": lock["ttl"]}

    @command
    def release(self, name: str, token: int) -> dict[str, Any]:
        """Free the lock held with ``token`` and grant it to the first waiter, in this same
        entry. LockNotHeldError if ``token`` does not hold it (released, expired, wrong)."""
        check_name(name)
        check_token(token)
        lock = self._held(name, token)
        successor = self._free(name, lock, "released")
        return {"released": token, "next": successor}

    @command
    def expire(self, name: str, token: int, since: int) -> bool:
        """Free the lock if it is still held with ``token`` and was not renewed after entry
        ``since`` (the leader's lease monitor proposes this); True if it freed it."""
        check_name(name)
        check_token(token)
        check_token(since)
        lock = self.locks.get(name)
        if lock is None or lock["token"] != token or lock["since"] != since:
            return False  # released, re-granted or renewed since the leader decided
        self._free(name, lock, "expired")
        return True

    @command
    def cancel(self, name: str, holder: str, waiting_only: bool = False) -> str:
        """Withdraw ``holder``'s request: leave the queue (``"withdrawn"``), or give back a
        grant that came too late for its waiter (``"released"``, unless ``waiting_only``:
        ``"holding"``). ``"none"`` when it neither waits nor holds."""
        check_name(name)
        check_holder(holder)
        lock = self.locks.get(name)
        if lock is None:
            return "none"
        if lock["holder"] == holder:
            if waiting_only:
                return "holding"
            self._free(name, lock, "cancelled")
            return "released"
        for k, waiter in enumerate(lock["waiters"]):
            if waiter["holder"] == holder:
                del lock["waiters"][k]
                if self._listener is not None:
                    self._listener.dequeued(
                        name, waiter, "dropped" if waiting_only else "withdrawn"
                    )
                return "withdrawn"
        return "none"

    # -- queries -----------------------------------------------------------------------------

    @query
    def describe(self, name: str) -> dict[str, Any] | None:
        """Who holds ``name`` (``token``, ``owner``, ``ttl``, ``granted_at`` in entry time) and
        the owners waiting for it, in order; None when it is free."""
        lock = self.locks.get(name)
        return None if lock is None else _describe(lock)

    @query
    def held(self) -> dict[str, dict[str, Any]]:
        """Every held lock, described as by :meth:`describe`."""
        return {name: _describe(lock) for name, lock in self.locks.items()}

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Any:
        return {"locks": self.locks}

    def restore(self, state: Any) -> None:
        self.locks = dict(state.get("locks", {}))
        if self._listener is not None:
            self._listener.restored(self.locks)

    # -- helpers -----------------------------------------------------------------------------

    def _held(self, name: str, token: int) -> dict[str, Any]:
        lock = self.locks.get(name)
        if lock is None or lock["token"] != token:
            now = "free" if lock is None else f"held with token {lock['token']}"
            raise LockNotHeldError(
                f"lock {name!r} is not held with token {token} (it is {now}): the lease was "
                "released, expired or lost. Acquire the lock again; whatever was written with "
                "the old token may be stale"
            )
        return lock

    def _grant(
        self, name: str, request: dict[str, Any], waiters: list[dict[str, Any]]
    ) -> dict[str, Any]:
        index = self.entry_index
        lock = {
            "token": index,
            "holder": request["holder"],
            "owner": request["owner"],
            "ttl": request["ttl"],
            "since": index,
            "granted_at": self.now,
            "waiters": waiters,
        }
        self.locks[name] = lock
        if self._listener is not None:
            self._listener.granted(name, lock)
        return _granted(lock)

    def _free(self, name: str, lock: dict[str, Any], reason: str) -> int | None:
        """Remove the grant; hand the lock to the first waiter. Returns the new token."""
        del self.locks[name]
        if self._listener is not None:
            self._listener.freed(name, lock, reason)
        waiters = lock["waiters"]
        if not waiters:
            return None
        head = waiters[0]
        return int(self._grant(name, head, waiters[1:])["token"])


def _granted(lock: dict[str, Any]) -> dict[str, Any]:
    return {"state": "granted", "token": lock["token"], "owner": lock["owner"], "ttl": lock["ttl"]}


def _describe(lock: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": lock["token"],
        "owner": lock["owner"],
        "ttl": lock["ttl"],
        "granted_at": lock["granted_at"],
        "waiters": [w["owner"] for w in lock["waiters"]],
    }


# --------------------------------------------------------------------------------------------
# The lease clock: one monitor per node


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


class _Watch:
    """This node's view of one acquisition, updated on the Raft loop: ``pending`` (asked or
    queued), ``granted`` (with ``token``), ``freed`` or ``cancelled`` (with ``reason``)."""

    __slots__ = ("event", "holder", "reason", "state", "token")

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.state = "pending"
        self.token = 0
        self.reason = ""
        self.event = threading.Event()


class LeaseMonitor:
    """Lease deadlines on this node's monotonic clock, and this node's waiters and holders.

    Fed by the :class:`LockTable` as entries are applied here (on the Raft loop, so every method
    it calls only updates a table and sets events). On the leader, one thread sleeps until the
    next deadline and proposes the expiry; the thread starts when the node first leads and
    stops with the node. ``clock`` is injected for tests, and ``run_thread=False`` leaves the
    proposing to whoever calls :meth:`due`.
    """

    def __init__(
        self,
        node: ClusterNode,
        *,
        clock: Callable[[], float] = time.monotonic,
        run_thread: bool = True,
    ) -> None:
        self._node = node
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

    # -- leadership (a status listener: on the Raft loop) ---------------------------------------

    def on_status(self, old: NodeStatus, new: NodeStatus) -> None:
        if old.running and not new.running:  # this node's waiters and holders are cut off
            with self._cond:
                watches = list(self._watches.values())
            for watch in watches:
                watch.reason = f"node {new.node_id} stopped"
                watch.state = "freed" if watch.state == "granted" else "cancelled"
                watch.event.set()
        if new.running == self._running and new.is_leader == self._leading:
            return  # most status changes are commits: nothing for the monitor
        with self._cond:
            self._running = new.running
            if new.is_leader and not self._leading:
                self._restart_clocks()
                if self._thread is None and self._run_thread:
                    self._thread = threading.Thread(
                        target=self._run, name=f"catga-leases-{new.node_id}", daemon=True
                    )
                    self._thread.start()
            self._leading = new.is_leader
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


def install_lock_table(node: ClusterNode) -> LockTable:
    """Register the lock table and its lease monitor on ``node`` (done by ClusterNode)."""
    monitor = LeaseMonitor(node)
    table = LockTable(monitor)
    node.state_machines.register(table)
    node.add_status_listener(monitor.on_status)
    return table


def _monitor_of(node: ClusterNode) -> LeaseMonitor:
    table = node.state_machines.machines.get(LockTable.name)
    monitor = table.listener if isinstance(table, LockTable) else None
    if not isinstance(monitor, LeaseMonitor):
        raise CatgaError(f"node {node.node_id} has no lock table (is it a ClusterNode?)")
    return monitor


# --------------------------------------------------------------------------------------------
# The holder's side


class Lease:
    """A held lock: its fencing ``token``, whether it is still valid, and its release.

    Renewed every ``ttl / 3`` by a thread of its own while held (unless ``auto_renew`` was
    off). When the lease is lost — it expired, a renewal was refused, or no renewal succeeded
    in time — :attr:`lost` is set and the :meth:`on_lost` callbacks run (on that thread). Use it
    as a context manager: leaving the block releases it. A lease nobody releases is renewed as
    long as its process lives, like a lock nobody unlocks.
    """

    def __init__(
        self,
        node: ClusterNode,
        monitor: LeaseMonitor,
        watch: _Watch,
        *,
        name: str,
        owner: str,
        ttl: float,
        sent: float,
        auto_renew: bool,
    ) -> None:
        self.name = name
        self.token = watch.token
        """The fencing token: the log index of the grant. Pass it to the protected resource."""
        self.owner = owner
        self.ttl = ttl
        self.lost = threading.Event()
        """Set when the lease is lost (not when it is released)."""
        self.lost_reason: str | None = None
        self._node = node
        self._monitor = monitor
        self._watch = watch
        self._clock = monitor.clock
        self._auto_renew = auto_renew
        self._lock = threading.Lock()
        self._valid_until = sent + ttl * (1 - CLOCK_DRIFT)
        self._next_renew = sent + ttl / 3
        self._released = False
        self._callbacks: list[Callable[[Lease], object]] = []
        self._keeper: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost.is_set() else "held"
        return f"<Lease {self.name!r} token={self.token} owner={self.owner!r} {state}>"

    # -- the holder's questions ----------------------------------------------------------------

    def is_valid(self) -> bool:
        """True while this holder may act under the lock: not released, not lost, and within
        the TTL counted from the last acquire or renewal it sent. Check it before each step of
        the critical section, and still pass :attr:`token` to what you write to: a pause right
        after the check is not seen by it."""
        return (
            not self._released
            and not self.lost.is_set()
            and self._watch.state == "granted"
            and self._clock() < self._valid_until
        )

    @property
    def valid_until(self) -> float:
        """When the lease stops being valid unless renewed, on ``time.monotonic()``."""
        return self._valid_until

    def remaining(self) -> float:
        """Seconds of validity left (0 once invalid)."""
        return max(0.0, self._valid_until - self._clock()) if self.is_valid() else 0.0

    def on_lost(self, callback: Callable[[Lease], object]) -> Callable[[Lease], object]:
        """Call ``callback(lease)`` once if the lease is lost (now, if it already is).
        Usable as a decorator."""
        with self._lock:
            if not self.lost.is_set():
                self._callbacks.append(callback)
                return callback
        _call(callback, self)
        return callback

    # -- renewal and release -------------------------------------------------------------------

    def renew(self) -> None:
        """Renew the lease now (the renewal thread does this by itself): LockNotHeldError if
        the lock is no longer held with this token."""
        if self._released:
            raise LockNotHeldError(f"lock {self.name!r} (token {self.token}) was released")
        sent = self._clock()
        timeout = max(0.5, self._valid_until - sent)
        self._node.state(LockTable, timeout=timeout).renew(self.name, self.token)
        with self._lock:
            self._valid_until = max(self._valid_until, sent + self.ttl * (1 - CLOCK_DRIFT))
            self._next_renew = sent + self.ttl / 3

    def release(self) -> None:
        """Give the lock back (the first waiter gets it in the same log entry).

        Raises LockNotHeldError if it was released already, or lost before: in that case
        another holder may have had it, and what was done in between is not protected."""
        with self._lock:
            if self._released:
                raise LockNotHeldError(
                    f"lock {self.name!r} (token {self.token}) was already released by this holder"
                )
            self._released = True
        self._watch.event.set()  # the renewal thread ends
        lost = self.lost.is_set() or self._watch.state != "granted"
        try:
            if self._watch.state == "granted":  # held as far as this node knows: free it
                self._node.state(LockTable).release(self.name, self.token)
        except LockNotHeldError:
            if not lost:
                raise
        finally:
            self._monitor.unwatch(self._watch.holder)
        if lost:
            reason = self.lost_reason or self._watch.reason or "lost"
            raise LockNotHeldError(
                f"lock {self.name!r} (token {self.token}) was lost before its release: {reason}"
            )

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._released:
            return
        try:
            self.release()
        except LockNotHeldError:
            if exc_type is None:
                raise  # the block did not run under the lock to its end: say so
        except CatgaError as error:  # no leader to take the release: the lease will expire
            log.warning("lock %r (token %d) not released: %s", self.name, self.token, error)

    # -- the renewal thread ----------------------------------------------------------------------

    def _start(self) -> None:
        self._keeper = threading.Thread(
            target=self._keep, name=f"catga-lease-{self.name[:40]}-{self.token}", daemon=True
        )
        self._keeper.start()

    def _keep(self) -> None:
        watch = self._watch
        while True:
            watch.event.clear()
            if self._released:
                return
            if watch.state != "granted":
                self._mark_lost(watch.reason or "the lock was freed")
                break
            now = self._clock()
            if now >= self._valid_until:
                self._mark_lost("its TTL ran out before a renewal succeeded")
                break
            if self._auto_renew and now >= self._next_renew:
                try:
                    self.renew()
                except LockNotHeldError as exc:
                    if self._released:
                        return
                    self._mark_lost(str(exc))
                    break
                except Exception as exc:  # no leader or quorum right now: try again soon
                    log.debug("lock %r: renewal failed, retrying: %s", self.name, exc)
                    with self._lock:
                        self._next_renew = self._clock() + min(RETRY_DELAY, self.ttl / 10)
                continue
            wake = min(self._valid_until, self._next_renew) if self._auto_renew else None
            watch.event.wait(self._valid_until - now if wake is None else wake - now)
        if not self._released:
            self._monitor.unwatch(watch.holder)
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback, self)

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if self.lost.is_set():
                return
            self.lost_reason = reason
            self.lost.set()
        # A lease nobody renews (auto_renew=False: the example's HTTP locks) ends by design.
        level = logging.WARNING if self._auto_renew else logging.INFO
        log.log(level, "lease on lock %r (token %d) lost: %s", self.name, self.token, reason)


def _call(callback: Callable[[Lease], object], lease: Lease) -> None:
    try:
        callback(lease)
    except Exception:
        log.exception("on_lost callback %r of lock %r failed", callback, lease.name)


# --------------------------------------------------------------------------------------------
# Acquiring


def acquire(
    target: ClusterNode | ClusterCoordinator,
    name: str,
    *,
    ttl: float = DEFAULT_TTL,
    timeout: float | None = None,
    owner: str | None = None,
    auto_renew: bool = True,
) -> Lease:
    """Acquire lock ``name`` through ``target`` (a node or its coordinator), from any node.

    Waits up to ``timeout`` seconds in the lock's queue (first come, first served; ``None``:
    as long as it takes, up to a day; ``0``: do not wait) and raises
    :class:`~catga_sync.errors.LockNotAcquiredError` when it did not get it.
    :class:`~catga_sync.errors.InvalidLockRequestError` for a bad name, TTL, owner or timeout,
    before anything is proposed. ``owner`` is shown to others (default: node, pid, thread).
    """
    node = _node_of(target)
    check_name(name)
    ttl = check_ttl(ttl)
    wait = MAX_WAIT if timeout is None else check_wait(timeout)
    owner = check_owner(_default_owner(node) if owner is None else owner)
    monitor = _monitor_of(node)
    clock = monitor.clock
    holder = uuid.uuid4().hex
    watch = monitor.watch(holder)
    try:
        deadline = clock() + wait
        sent = clock()
        try:
            answer = node.state(LockTable).acquire(name, holder, owner, ttl, wait)
        except CommitTimeoutError:
            _give_up(node, name, holder)
            raise
        if answer["state"] == "busy":
            raise LockNotAcquiredError(
                f"lock {name!r} is held by {answer['owner']!r} (token {answer['token']})"
                + (f"; {answer['reason']}" if "reason" in answer else "")
            )
        while watch.state == "pending":
            left = deadline - clock()
            if left <= 0 or not watch.event.wait(left):
                break
            watch.event.clear()
        if watch.state == "pending":  # timed out in the queue (a late grant is given back)
            _give_up(node, name, holder)
            raise LockNotAcquiredError(
                f"lock {name!r} was not acquired within {wait:g}s (waiting behind its holder)"
            )
        if watch.state != "granted":
            raise LockNotAcquiredError(f"lock {name!r} was not acquired: {watch.reason}")
        lease = Lease(
            node, monitor, watch, name=name, owner=owner, ttl=ttl, sent=sent, auto_renew=auto_renew
        )
        if lease.valid_until - clock() < ttl / 2:  # a long wait used up the acquire's clock
            try:
                lease.renew()
            except LockNotHeldError as exc:
                raise LockNotAcquiredError(f"lock {name!r} was lost at once: {exc}") from exc
    except BaseException:
        monitor.unwatch(holder)
        raise
    lease._start()
    return lease


def try_acquire(
    target: ClusterNode | ClusterCoordinator,
    name: str,
    *,
    ttl: float = DEFAULT_TTL,
    timeout: float = 0.0,
    owner: str | None = None,
    auto_renew: bool = True,
) -> Lease | None:
    """Like :func:`acquire`, but returns None instead of raising LockNotAcquiredError; by
    default it does not wait at all."""
    try:
        return acquire(target, name, ttl=ttl, timeout=timeout, owner=owner, auto_renew=auto_renew)
    except LockNotAcquiredError:
        return None


@contextmanager
def lock(
    target: ClusterNode | ClusterCoordinator,
    name: str,
    *,
    ttl: float = DEFAULT_TTL,
    timeout: float | None = None,
    owner: str | None = None,
    auto_renew: bool = True,
) -> Iterator[Lease]:
    """``with lock(node, "name", ttl=10) as lease:`` — :func:`acquire` on entry (raising
    LockNotAcquiredError), release on exit. If the lease is lost before the block ends and the
    block raised nothing, LockNotHeldError is raised on exit."""
    lease = acquire(target, name, ttl=ttl, timeout=timeout, owner=owner, auto_renew=auto_renew)
    with lease:
        yield lease


class DistributedLock:
    """The guide's ``DistributedLock``::

        lease = DistributedLock.try_acquire(coordinator, resource="critical-operation", timeout=5)
        if lease is None or not lease.is_valid():
            return False
        with lease:
            do_work(fence=lease.token)

    :func:`lock` (``with cluster.lock(name, ttl=...)``) is the same, raising when not acquired.
    """

    @staticmethod
    def try_acquire(
        coordinator: ClusterCoordinator | ClusterNode,
        resource: str,
        timeout: float = 0.0,
        *,
        ttl: float = DEFAULT_TTL,
        owner: str | None = None,
        auto_renew: bool = True,
    ) -> Lease | None:
        """The lease on ``resource``, waiting up to ``timeout`` seconds; None if not acquired."""
        return try_acquire(
            coordinator, resource, ttl=ttl, timeout=timeout, owner=owner, auto_renew=auto_renew
        )


def _give_up(node: ClusterNode, name: str, holder: str) -> None:
    """Leave the queue, or give back a grant that came too late (best effort: a grant nobody
    takes expires after its TTL anyway)."""
    try:
        node.state(LockTable).cancel(name, holder)
    except CatgaError as exc:
        log.info("lock %r: could not withdraw request %s: %s", name, holder, exc)


def _node_of(target: ClusterNode | ClusterCoordinator) -> ClusterNode:
    from .coordinator import ClusterCoordinator

    return target.node if isinstance(target, ClusterCoordinator) else target


def _default_owner(node: ClusterNode) -> str:
    owner = f"{node.node_id}/pid {os.getpid()}/{threading.current_thread().name}"
    return owner[:MAX_OWNER] if owner.isprintable() else f"{node.node_id}/pid {os.getpid()}"
