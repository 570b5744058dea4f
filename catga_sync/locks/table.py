"""The replicated lock table, and the checks every lock request passes twice.

:class:`LockTable` is a state machine like any other: pure and deterministic, applied in log
order on every node, read from snapshots. It reads no clock; a grant's fencing token is
:attr:`~catga_sync.fsm.StateMachine.entry_index`, the log index of the entry that granted it,
so tokens only ever increase. What it applies it reports to a :class:`LockListener` (this
node's :class:`~catga_sync.locks.monitor.LeaseMonitor`), which keeps the time.

The ``check_*`` functions validate a request on the client, before anything is proposed, and
again in apply, where a bad entry must fail the same way on every node.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, TypeGuard

from ..errors import InvalidLockRequestError, LockNotHeldError
from ..fsm import StateMachine, command, query

MIN_TTL = 0.1
MAX_TTL = 86_400.0
MAX_WAIT = 86_400.0
"""The longest wait in a lock's queue; ``timeout=None`` waits this long."""
MAX_NAME = 256
MAX_OWNER = 256
MAX_HOLDER = 64
MAX_WAITERS = 1024
"""Waiters queued on one lock; more are refused (the lock is busy)."""
MAX_RENEWALS = 1000
"""Renewals in one ``renew_many`` entry at most (the sender also bounds its size)."""


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
            f"a lock TTL must be a number of seconds (or a timedelta) from {MIN_TTL:g} to "
            f"{MAX_TTL:g}, not {ttl!r}"
        )
    return float(ttl)


def check_wait(wait: object) -> float:
    if not _is_number(wait) or not 0 <= wait <= MAX_WAIT:
        raise InvalidLockRequestError(
            f"a lock wait must be a number of seconds (or a timedelta) from 0 to {MAX_WAIT:g} "
            f"(or None on the "
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
    :func:`~catga_sync.locks.lease.acquire`, :func:`~catga_sync.locks.lease.lock`,
    ``cluster.lock(...)`` or :class:`~catga_sync.locks.lease.DistributedLock` rather than
    calling its commands. A lock that is free and has no waiters has no row.
    """

    name = "catga.locks"

    def __init__(self, listener: LockListener | None = None) -> None:
        self.locks: dict[str, dict[str, Any]] = {}
        self._listener = listener

    @property
    def listener(self) -> LockListener | None:
        """Who hears about grants and releases on this node (its
        :class:`~catga_sync.locks.monitor.LeaseMonitor`)."""
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
    def renew_many(self, renewals: list[list[Any]]) -> list[dict[str, Any]]:
        """Renew several grants in one entry (:mod:`catga_sync.locks.renewals`):
        ``[[name, token], ...]``, each as :meth:`renew` would. A grant that no longer holds
        gets ``{"error": why}`` in its place and the others are renewed all the same; a
        malformed list (InvalidLockRequestError) renews none."""
        if not isinstance(renewals, list) or not 1 <= len(renewals) <= MAX_RENEWALS:
            raise InvalidLockRequestError(
                f"renew_many takes a list of 1 to {MAX_RENEWALS} [name, token] pairs"
            )
        for pair in renewals:
            if not isinstance(pair, list) or len(pair) != 2:
                raise InvalidLockRequestError(f"a renewal is a [name, token] pair, not {pair!r}")
            check_name(pair[0])
            check_token(pair[1])
        answers: list[dict[str, Any]] = []
        for name, token in renewals:
            try:
                answers.append(self.renew(name, token))
            except LockNotHeldError as exc:
                answers.append({"error": str(exc)})
        return answers

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
