"""The holder's side: :func:`acquire` (and its shapes), and the :class:`Lease` it returns.

A :class:`Lease` is the holder's handle on a granted lock: the fencing token,
:meth:`Lease.is_valid`, its renewal while it is held, and its release. The holder counts
its lease from when it *sent* the request the cluster applied last for it, for
``ttl × (1 - CLOCK_DRIFT)`` (the package docstring says why that is safe).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from ..config_values import Duration, seconds
from ..coordinator import ClusterCoordinator
from ..errors import (
    CatgaError,
    CommitTimeoutError,
    LockNotAcquiredError,
    LockNotHeldError,
)
from .monitor import RETRY_DELAY, LeaseMonitor, _monitor_of, _Watch
from .table import MAX_OWNER, MAX_WAIT, LockTable, check_name, check_owner, check_ttl, check_wait

if TYPE_CHECKING:
    from types import TracebackType

    from ..runtime.extension import NodeHandle

log = logging.getLogger("catga_sync.locks")  # the package's logger, as before it was split

DEFAULT_TTL = 30.0
"""Seconds a lease lasts without renewal (renewed every third of it while held)."""
CLOCK_DRIFT = 0.01
"""How much faster a holder's clock may run than the leader's: a holder believes in its lease
for ``ttl × (1 - CLOCK_DRIFT)`` only (Redlock uses the same 1%)."""


MAX_RENEW_WINDOW = 5.0
"""Seconds a renewal may go early at most (a day-long TTL would otherwise renew two hours
early, and make the keeper look through two hours' worth of leases at every wake-up)."""


class Holding(Protocol):
    """How a :class:`Lease` renews and releases its grant, and hears that it is gone: through
    this node (:class:`LocalHolding`), or over HTTP from a process outside the cluster
    (:class:`catga_sync.client.ClusterClient`)."""

    event: threading.Event
    """Set to wake whoever keeps the lease (the grant was freed, the lease released)."""

    @property
    def reason(self) -> str:
        """Why the grant is gone, once :meth:`granted` is False."""
        ...

    def granted(self) -> bool:
        """Still granted, as far as this holder can tell."""
        ...

    def renew(self, name: str, token: int, timeout: float) -> None:
        """Renew the grant ``token``; LockNotHeldError when it no longer holds."""
        ...

    def release(self, name: str, token: int) -> None:
        """Free the grant ``token``; LockNotHeldError when it no longer holds."""
        ...

    def close(self) -> None:
        """The lease is over: stop listening for it."""
        ...


class LocalHolding:
    """A grant held through a node of the cluster: its lease monitor's watch tells when the
    lock is freed, and commands through the node renew and release it."""

    def __init__(self, node: NodeHandle, monitor: LeaseMonitor, watch: _Watch) -> None:
        self._node = node
        self._monitor = monitor
        self._watch = watch
        self.event: threading.Event = watch.event

    @property
    def reason(self) -> str:
        return self._watch.reason

    def granted(self) -> bool:
        return self._watch.state == "granted"

    def renew(self, name: str, token: int, timeout: float) -> None:
        self._monitor.renewals.renew(name, token, timeout)  # shares entries with the others

    def release(self, name: str, token: int) -> None:
        self._node.state(LockTable).release(name, token)

    def keep(self, lease: Lease) -> None:
        """Have the node's lease keeper keep ``lease``: renew it, and tell when it is lost."""
        keeper = self._monitor.keeper
        self._watch.event.on_set = lambda: keeper.poke(lease)
        keeper.add(lease)

    def close(self) -> None:
        self._monitor.unwatch(self._watch.holder)


class Lease:
    """A held lock: its fencing ``token``, whether it is still valid, and its release.

    Renewed every ``ttl / 3`` while held (unless ``auto_renew`` was off): by the node's
    :class:`~catga_sync.locks.keeper.LeaseKeeper`, with the other leases due, or from outside
    the cluster by a thread of its own. When the lease is lost — it expired, a renewal was
    refused, or no renewal succeeded in time — :attr:`lost` is set and the :meth:`on_lost`
    callbacks run (on a thread of their own, or the lease's). Use it as a context manager:
    leaving the block releases it. A lease nobody releases is renewed as long as its process
    lives, like a lock nobody unlocks.
    """

    def __init__(
        self,
        holding: Holding,
        *,
        name: str,
        token: int,
        owner: str,
        ttl: float,
        sent: float,
        auto_renew: bool,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.token = token
        """The fencing token: the log index of the grant. Pass it to the protected resource."""
        self.owner = owner
        self.ttl = ttl
        self.lost = threading.Event()
        """Set when the lease is lost (not when it is released)."""
        self.lost_reason: str | None = None
        self._holding = holding
        self._clock = clock
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
            and self._holding.granted()
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
        """Renew the lease now (it is renewed by itself): LockNotHeldError if
        the lock is no longer held with this token."""
        if self._released:
            raise LockNotHeldError(f"lock {self.name!r} (token {self.token}) was released")
        sent = self._clock()
        timeout = max(0.5, self._valid_until - sent)
        self._holding.renew(self.name, self.token, timeout)
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
        self._holding.event.set()  # its keeper lets it go
        lost = self.lost.is_set() or not self._holding.granted()
        try:
            if self._holding.granted():  # held as far as this holder knows: free it
                self._holding.release(self.name, self.token)
        except LockNotHeldError:
            if not lost:
                raise
        finally:
            self._holding.close()
        if lost:
            reason = self.lost_reason or self._holding.reason or "lost"
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

    # -- keeping it: the node's lease keeper, or a thread of its own --------------------------

    def _start(self) -> None:
        holding = self._holding
        if isinstance(holding, LocalHolding):
            holding.keep(self)
            return
        self._keeper = threading.Thread(
            target=self._keep, name=f"catga-lease-{self.name[:40]}-{self.token}", daemon=True
        )
        self._keeper.start()

    @property
    def _renew_window(self) -> float:
        """How long before its time a renewal may go, to share an entry with others due: a
        lease is then renewed between a fourth and a third of its TTL after the last."""
        return min(self.ttl / 12, MAX_RENEW_WINDOW) if self._auto_renew else 0.0

    def _next_step(self, early: float = 0.0) -> tuple[str, float]:
        """What keeping the lease takes now: ``("renew", now)`` (due, or due within ``early``
        seconds), ``("wait", until)``, ``("lost", 0)`` (marked lost: :meth:`_end` is left to
        run) or ``("stop", 0)`` (released)."""
        holding = self._holding
        if self._released:
            return "stop", 0.0
        if self.lost.is_set():  # refused by a renewal while its watch still said granted
            return "lost", 0.0
        if not holding.granted():
            self._mark_lost(holding.reason or "the lock was freed")
            return "lost", 0.0
        now = self._clock()
        if now >= self._valid_until:
            self._mark_lost("its TTL ran out before a renewal succeeded")
            return "lost", 0.0
        if self._auto_renew and now >= self._next_renew - early:
            return "renew", now
        return "wait", self._wake_at()

    def _wake_at(self) -> float:
        with self._lock:
            if self._auto_renew:
                return min(self._valid_until, self._next_renew)
            return self._valid_until

    def _renewed(self, sent: float) -> str:
        """A renewal sent at ``sent`` succeeded: "wait"."""
        with self._lock:
            self._valid_until = max(self._valid_until, sent + self.ttl * (1 - CLOCK_DRIFT))
            self._next_renew = sent + self.ttl / 3
        return "wait"

    def _renew_failed(self, error: BaseException) -> str:
        """A renewal failed with ``error``: "lost" (refused: marked lost), "stop" (released
        meanwhile) or "wait" (no leader or quorum right now: retried soon)."""
        if isinstance(error, LockNotHeldError):
            if self._released:
                return "stop"
            self._mark_lost(str(error))
            return "lost"
        log.debug("lock %r: renewal failed, retrying: %s", self.name, error)
        with self._lock:
            self._next_renew = self._clock() + min(RETRY_DELAY, self.ttl / 10)
        return "wait"

    def _keep(self) -> None:
        """The thread of a lease held from outside the cluster (its holding has no keeper)."""
        holding = self._holding
        while True:
            holding.event.clear()
            step, _ = self._next_step()
            if step == "renew":
                try:
                    self.renew()
                    continue
                except Exception as exc:
                    step = self._renew_failed(exc)
                if step == "wait":
                    continue  # retried at its new time
            if step == "stop":
                return
            if step == "lost":
                break
            holding.event.wait(max(0.0, self._wake_at() - self._clock()))
        self._end()

    def _end(self) -> None:
        """The lease was lost: stop listening for it and run its ``on_lost`` callbacks."""
        if not self._released:
            self._holding.close()
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
        # A lease nobody renews (auto_renew=False: the example's HTTP locks) ends by design,
        # by its TTL or its release, as often as locks are taken: at INFO that was 19 lines in
        # 20 of a busy node's log (the soak run).
        level = logging.WARNING if self._auto_renew else logging.DEBUG
        log.log(level, "lease on lock %r (token %d) lost: %s", self.name, self.token, reason)


def _call(callback: Callable[[Lease], object], lease: Lease) -> None:
    try:
        callback(lease)
    except Exception:
        log.exception("on_lost callback %r of lock %r failed", callback, lease.name)


# --------------------------------------------------------------------------------------------
# Acquiring


def acquire(
    target: NodeHandle | ClusterCoordinator,
    name: str,
    *,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration | None = None,
    owner: str | None = None,
    auto_renew: bool = True,
) -> Lease:
    """Acquire lock ``name`` through ``target`` (a node or its coordinator), from any node.

    ``ttl`` and ``timeout`` are seconds or ``timedelta``. Waits up to ``timeout`` in the lock's
    queue (first come, first served; ``None``:
    as long as it takes, up to a day; ``0``: do not wait) and raises
    :class:`~catga_sync.errors.LockNotAcquiredError` when it did not get it.
    :class:`~catga_sync.errors.InvalidLockRequestError` for a bad name, TTL, owner or timeout,
    before anything is proposed. ``owner`` is shown to others (default: node, pid, thread).
    """
    node = _node_of(target)
    check_name(name)
    ttl = check_ttl(seconds(ttl))
    wait = MAX_WAIT if timeout is None else check_wait(seconds(timeout))
    owner = check_owner(_default_owner(node) if owner is None else owner)
    link = getattr(node, "host_link", None)
    if link is not None:  # a worker that does not host its node: the hosting worker takes it
        return link.acquire(name, ttl=ttl, timeout=wait, owner=owner, auto_renew=auto_renew)
    monitor = _monitor_of(node)
    clock = monitor.clock
    watch = monitor.watch(uuid.uuid4().hex)
    try:
        sent = clock()
        token = wait_for_grant(node, watch, name, owner=owner, ttl=ttl, wait=wait)
        lease = Lease(
            LocalHolding(node, monitor, watch),
            name=name,
            token=token,
            owner=owner,
            ttl=ttl,
            sent=sent,
            auto_renew=auto_renew,
            clock=clock,
        )
        if lease.valid_until - clock() < ttl / 2:  # a long wait used up the acquire's clock
            try:
                lease.renew()
            except LockNotHeldError as exc:
                raise LockNotAcquiredError(f"lock {name!r} was lost at once: {exc}") from exc
    except BaseException:
        monitor.unwatch(watch.holder)
        raise
    lease._start()
    return lease


def wait_for_grant(
    node: NodeHandle,
    watch: _Watch,
    name: str,
    *,
    owner: str,
    ttl: float,
    wait: float,
    give_back: bool = True,
) -> int:
    """Ask for lock ``name`` for ``watch.holder`` (a watch of this node's lease monitor) and
    wait up to ``wait`` seconds in its queue; returns the fencing token of the grant.

    Raises LockNotAcquiredError when it is busy (``wait`` 0) or the wait ran out: the request
    is withdrawn then, and a grant that comes too late is given back — unless ``give_back``
    is off: a holder that may ask again through another node (a client retrying after a lost
    answer) must not lose there the grant this node gave up on; unclaimed, it expires after
    its TTL. Asking again for a holder that holds the lock already returns its token.

    The caller unwatches ``watch``: :func:`acquire` keeps it for its :class:`Lease`, the
    client routes drop it at once (no thread stays behind for a remote holder)."""
    holder = watch.holder
    clock = _monitor_of(node).clock
    deadline = clock() + wait
    try:
        answer = node.state(LockTable).acquire(name, holder, owner, ttl, wait)
    except CommitTimeoutError:
        _give_up(node, name, holder, give_back=give_back)
        raise
    if answer["state"] == "busy":
        raise LockNotAcquiredError(
            f"lock {name!r} is held by {answer['owner']!r} (token {answer['token']})"
            + (f"; {answer['reason']}" if "reason" in answer else "")
        )
    if answer["state"] == "granted" and watch.state == "pending":
        # Held already by this holder (a repeated request): no new grant is applied.
        watch.token = int(answer["token"])
        watch.state = "granted"
    while watch.state == "pending":
        left = deadline - clock()
        if left <= 0 or not watch.event.wait(left):
            break
        watch.event.clear()
    if watch.state == "pending":  # timed out in the queue (a late grant is given back)
        _give_up(node, name, holder, give_back=give_back)
        raise LockNotAcquiredError(
            f"lock {name!r} was not acquired within {wait:g}s (waiting behind its holder)"
        )
    if watch.state != "granted":
        raise LockNotAcquiredError(f"lock {name!r} was not acquired: {watch.reason}")
    return watch.token


def try_acquire(
    target: NodeHandle | ClusterCoordinator,
    name: str,
    *,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration = 0.0,
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
    target: NodeHandle | ClusterCoordinator,
    name: str,
    *,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration | None = None,
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
        coordinator: ClusterCoordinator | NodeHandle,
        resource: str,
        timeout: Duration = 0.0,
        *,
        ttl: Duration = DEFAULT_TTL,
        owner: str | None = None,
        auto_renew: bool = True,
    ) -> Lease | None:
        """The lease on ``resource``, waiting up to ``timeout`` seconds; None if not acquired."""
        return try_acquire(
            coordinator, resource, ttl=ttl, timeout=timeout, owner=owner, auto_renew=auto_renew
        )


def _give_up(node: NodeHandle, name: str, holder: str, *, give_back: bool = True) -> None:
    """Leave the queue, or give back a grant that came too late (unless ``give_back`` is off;
    best effort: a grant nobody takes expires after its TTL anyway)."""
    try:
        node.state(LockTable).cancel(name, holder, waiting_only=not give_back)
    except CatgaError as exc:
        log.info("lock %r: could not withdraw request %s: %s", name, holder, exc)


def _node_of(target: NodeHandle | ClusterCoordinator) -> NodeHandle:
    return target.node if isinstance(target, ClusterCoordinator) else target


def _default_owner(node: NodeHandle) -> str:
    owner = f"{node.node_id}/pid {os.getpid()}/{threading.current_thread().name}"
    return owner[:MAX_OWNER] if owner.isprintable() else f"{node.node_id}/pid {os.getpid()}"
