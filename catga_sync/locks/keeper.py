"""One thread per node that keeps every lease held through it: renews those due, all in shared
``renew_many`` entries, and marks lost those whose grant went or whose TTL ran out.

A thread per lease made a node's holder side grow with its leases: about 28 KiB of RSS and a
thread each, and at 10,000 leases (``benchmarks/scale_locks.py``) ten thousand threads taking
turns on the GIL to renew one lease each while the leader fell behind and leases ran out. Here
the leases wait in a heap by when each must be looked at again; the keeper wakes for the
earliest, or at once when a lease's watch is set (its grant was freed, it was released), takes
every lease due by then and renews them together (:meth:`RenewalGroup.renew_batch`).

The keeper runs no user code: the ``on_lost`` callbacks of lost leases run on one thread of
their own, so a slow callback holds up no renewal. That thread is shared by the node's
leases and runs their callbacks in the order the leases were lost: keep them short, and hand
long work to a thread of your own. While the keeper waits for a batch of renewals it looks at
no other lease; the wait is bounded by the next lease due and by :data:`MAX_WAIT` (a second;
half a second at least), so a lease freed or run out meanwhile is marked lost that much later
at most (its :meth:`~catga_sync.locks.lease.Lease.is_valid`, which reads the clock itself, is
never late). The keeper's thread ends when it keeps no lease and starts again with the next.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .renewals import RenewalGroup

__all__ = ["LeaseKeeper"]

MIN_WAIT = 0.5
"""Seconds a batch of renewals is given at least."""
MAX_WAIT = 1.0
"""Seconds a batch of renewals is given at most: while it waits, the keeper looks at no other
lease, those added since it was sent included."""
RETRY = 0.2
"""Seconds before leases are looked at again after the keeper failed on them."""


class Lease(Protocol):
    """What the keeper needs of a :class:`catga_sync.locks.lease.Lease` (named here, not
    imported: the lease module imports the monitor, which makes the keeper)."""

    name: str
    token: int

    @property
    def valid_until(self) -> float: ...
    @property
    def _renew_window(self) -> float: ...
    def _next_step(self, early: float = 0.0) -> tuple[str, float]: ...
    def _wake_at(self) -> float: ...
    def _renewed(self, sent: float) -> str: ...
    def _renew_failed(self, error: BaseException) -> str: ...
    def _end(self) -> None: ...


log = logging.getLogger("catga_sync.locks")


class LeaseKeeper:
    """Keeps the leases of one node (thread-safe); ``clock`` is the one the leases count on."""

    def __init__(self, name: str, renewals: RenewalGroup, clock: Callable[[], float]) -> None:
        self._name = name
        self._renewals = renewals
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Lease]] = []
        self._poked: dict[int, Lease] = {}
        self._seq = itertools.count()
        self._planned: dict[int, int] = {}
        """id(lease) -> the sequence number of its one heap entry that counts."""
        self._thread: threading.Thread | None = None
        self._window = 0.0
        """The widest renewal window of the leases kept (it never shrinks: only a bound)."""
        self._endings = _Endings(f"{name}-endings")

    @property
    def kept(self) -> int:
        """How many leases it keeps now."""
        with self._cond:
            return len(self._planned)

    def add(self, lease: Lease) -> None:
        """Keep ``lease`` from now until it is released or lost."""
        with self._cond:
            self._window = max(self._window, lease._renew_window)
            self._plan(lease, self._clock())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def poke(self, lease: Lease) -> None:
        """Look at ``lease`` now (its watch was set)."""
        with self._cond:
            if id(lease) in self._planned:
                self._poked[id(lease)] = lease
                self._cond.notify()

    def _plan(self, lease: Lease, at: float) -> None:
        seq = next(self._seq)
        self._planned[id(lease)] = seq
        heapq.heappush(self._heap, (at, seq, lease))

    def _take_due(self) -> list[Lease] | None:
        """The leases to look at now, waiting until there are some; None: none is kept. With
        them come those whose renewal is due within their window (:attr:`Lease._renew_window`):
        leases that fall due one after the other then share an entry instead of one each."""
        with self._cond:
            while True:
                if not self._planned:
                    self._thread = None
                    return None
                now = self._clock()
                due, self._poked = self._poked, {}
                heap, planned = self._heap, self._planned
                if heap and heap[0][0] <= now:  # something is due: take what may come along
                    later = []
                    while heap and heap[0][0] <= now + self._window:
                        entry = heapq.heappop(heap)
                        lease = entry[2]
                        if planned.get(id(lease)) != entry[1]:
                            continue  # superseded
                        if entry[0] - lease._renew_window <= now:
                            due[id(lease)] = lease
                        else:
                            later.append(entry)
                    for entry in later:
                        heapq.heappush(heap, entry)
                if due:
                    for key in due:
                        planned[key] = -1  # its old heap entries no longer count
                    return list(due.values())
                while heap and planned.get(id(heap[0][2])) != heap[0][1]:
                    heapq.heappop(heap)  # superseded: found by the wait below otherwise
                self._cond.wait(max(0.0, heap[0][0] - now) if heap else None)

    def _next_at(self) -> float:
        """When the first lease not being looked at now is due (infinity: none is)."""
        with self._cond:
            heap, planned = self._heap, self._planned
            while heap and planned.get(id(heap[0][2])) != heap[0][1]:
                heapq.heappop(heap)
            return heap[0][0] if heap else float("inf")

    def _run(self) -> None:
        try:
            while True:
                leases = self._take_due()
                if leases is None:
                    return
                try:
                    self._keep(leases)
                except Exception:  # a bug: look at them again soon rather than drop them
                    log.exception("lease keeper %s failed; retrying", self._name)
                    for lease in leases:
                        self._replan(lease, self._clock() + RETRY)
        finally:
            with self._cond:  # ended by a bug that got through: the next add() starts anew
                if self._thread is threading.current_thread():
                    self._thread = None

    def _keep(self, leases: list[Lease]) -> None:
        to_renew: list[Lease] = []
        for lease in leases:
            step, at = lease._next_step(early=lease._renew_window)
            if step == "renew":
                to_renew.append(lease)
            elif step == "wait":
                self._replan(lease, at)
            else:
                self._drop(lease, lost=step == "lost")
        if not to_renew:
            return
        sent = self._clock()
        # Waiting on the renewals, the keeper looks at no other lease: not past the first one
        # due, nor past a renewal's TTL, nor past MAX_WAIT (leases added meanwhile); a lease
        # freed meanwhile is told late by as much. A renewal that timed out is retried soon.
        until = min(self._next_at(), sent + MAX_WAIT, *(lease.valid_until for lease in to_renew))
        errors = self._renewals.renew_batch(
            [(lease.name, lease.token) for lease in to_renew], max(MIN_WAIT, until - sent)
        )
        for lease, error in zip(to_renew, errors, strict=True):
            step = lease._renewed(sent) if error is None else lease._renew_failed(error)
            if step == "wait":
                self._replan(lease, lease._wake_at())
            else:
                self._drop(lease, lost=step == "lost")

    def _replan(self, lease: Lease, at: float) -> None:
        with self._cond:
            if id(lease) in self._planned:
                self._plan(lease, at)

    def _drop(self, lease: Lease, *, lost: bool) -> None:
        with self._cond:
            if self._planned.pop(id(lease), None) is None:
                return  # dropped already
            self._poked.pop(id(lease), None)
        if lost:  # its callbacks are user code: never on the keeper's thread
            self._endings.put(lease)


class _Endings:
    """One thread that runs the endings of lost leases (their ``on_lost`` callbacks), in
    order, started when one comes and ended when none is left: not a thread per lease, even
    when a node's stop loses all of them at once."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._queue: deque[Lease] = deque()
        self._running = False

    def put(self, lease: Lease) -> None:
        with self._lock:
            self._queue.append(lease)
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                lease = self._queue.popleft()
            try:
                lease._end()
            except Exception:
                log.exception("the end of lease %r failed", lease)
