"""The :class:`ClusterClient`: the cluster's API for a process that is not a member."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ..config_values import Duration, seconds
from ..errors import (
    CatgaError,
    ClientAuthError,
    CommitTimeoutError,
    ConfigError,
    LeaderUnreachableError,
    LockNotAcquiredError,
    LockNotHeldError,
    NoLeaderError,
    NotLeaderError,
    UsageError,
)
from ..fsm import Outcome, StateMachine
from ..kv import ReplicatedDict
from ..locks import (
    DEFAULT_TTL,
    MAX_OWNER,
    MAX_WAIT,
    Lease,
    check_name,
    check_owner,
    check_ttl,
    check_wait,
)
from ..runtime.state import ClientSession, request_id
from ..transport.client_wire import (
    COMMANDS_PATH,
    LEADERSHIP_PATH,
    LOCK_ACQUIRE_PATH,
    LOCK_CANCEL_PATH,
    LOCK_RELEASE_PATH,
    LOCK_RENEW_PATH,
    QUERIES_PATH,
    STATUS_PATH,
)
from .handles import (
    LONG_POLL_SLACK,
    LeadershipWatcher,
    RemoteHolding,
    RemoteStateHandle,
    pause_between_polls,
)
from .http import ClientTransport, TlsOption
from .status import ClientStatus

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ClientStatus", "ClusterClient"]

M = TypeVar("M", bound=StateMachine)

log = logging.getLogger("catga_sync.client")

DEFAULT_TIMEOUT = 10.0
CANCEL_TIMEOUT = 5.0
"""Seconds at most spent cancelling an acquire given up on (it is best effort)."""
MAX_CLIENT_ID = 120
"""The longest ``client_id`` prefix (the session id, with its suffix, must fit the nodes'
200 characters)."""


class ClusterClient:
    """The cluster, from a process that is not one of its members (a cron script, a Celery or
    RQ worker, another service): status and leadership, commands and linearizable queries on
    the replicated state machines, and locks with fencing tokens — over the nodes' client
    routes (``{url_prefix}/client``, :mod:`catga_sync.transport.client_wire`).

    ``endpoints``: one or more nodes (``http://node0:5000``). ``secret``: the nodes'
    ``ClientToken``, sent as a bearer token (not the peers' secret). ``tls``: an SSLContext
    (its CAs alone), the path of a CA file, True (requests' CA bundle, certifi's) or False (no
    verification). ``timeout``:
    seconds any call may take, retries included, unless it is given its own. ``headers``: sent
    with every request. ``client_id``: a prefix naming this client in the cluster's session
    table (exactly-once commands); its session id is ``{client_id}-{random suffix}``, so two
    clients never share a session (default: a random id).

    Requests go to the leader when it is known, else to any member (a follower forwards); a
    member that cannot be reached, or says the cluster cannot answer now, is left for the
    next, until the timeout: the typed error of the last failure is raised then, never later.
    Thread-safe: share one client between threads; close it (or use ``with``) when done.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        secret: str | None = None,
        tls: TlsOption = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        client_id: str | None = None,
        url_prefix: str = "/_catga",
    ) -> None:
        self.timeout = seconds(timeout)
        self._transport = ClientTransport(
            endpoints, secret=secret, tls=tls, headers=headers, url_prefix=url_prefix
        )
        if client_id is not None and (
            not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID
        ):
            raise ConfigError(
                f"ClusterClient(client_id=...) is a prefix of 1 to {MAX_CLIENT_ID} characters"
            )
        # A prefix, never the whole id: two clients given the same client_id (two runs of one
        # script) must not share a session, or the cluster would answer one's commands with the
        # other's cached outcomes (same client, same seq) without applying them.
        suffix = uuid.uuid4().hex
        self.session = ClientSession(f"{client_id}-{suffix[:12]}" if client_id else suffix)
        """This client's identity and request numbers (exactly-once commands)."""
        self._watchers: list[LeadershipWatcher] = []
        self._lock = threading.Lock()

    @property
    def transport(self) -> ClientTransport:
        """The HTTP side: endpoints, the leader hint, retries (:mod:`catga_sync.client.http`)."""
        return self._transport

    def __repr__(self) -> str:
        return f"<ClusterClient {', '.join(self.endpoints)} leader={self._transport.leader}>"

    @property
    def endpoints(self) -> list[str]:
        """The nodes this client was given, normalized."""
        return list(self._transport.endpoints)

    @property
    def closed(self) -> bool:
        return self._transport.closed.is_set()

    # -- status and leadership -------------------------------------------------------------------

    def status(self, *, timeout: Duration | None = None) -> ClientStatus:
        """One node's view of the cluster (the leader's when known)."""
        reply = self._transport.request("GET", STATUS_PATH, deadline=self._deadline(timeout))
        status = ClientStatus.from_json(reply.body)
        self._transport.note_leader(status.leader)
        return status

    @property
    def leader(self) -> str | None:
        """The leader's endpoint as last seen; asks a node when none is known (None when no
        node names one). ClientAuthError when the nodes refuse the token."""
        leader = self._transport.leader
        if leader is None:
            try:
                leader = self.status().leader
            except ClientAuthError:
                raise  # a wrong token is no unknown leader
            except CatgaError:
                return None
        return leader

    def wait_for_leader(self, timeout: Duration) -> str:
        """The leader's endpoint, once a node names one; NoLeaderError after ``timeout``
        (ClientAuthError at once when the nodes refuse the token)."""
        limit = seconds(timeout)
        deadline = time.monotonic() + limit
        seen: tuple[str, int] | None = None
        last: Exception | None = None
        failures = 0
        while True:
            started = time.monotonic()
            remaining = deadline - started
            if remaining <= 0:
                break
            try:
                wait = min(remaining * 0.8, 5.0)  # answered before the deadline
                status, member = self._long_poll(seen, wait, deadline=deadline)
            except ClientAuthError:
                raise  # no retry mends a wrong token
            except CatgaError as exc:
                last, seen, failures = exc, None, failures + 1
                pause_between_polls(self._transport.closed, started, failures, deadline)
                continue
            if status.leader is not None:
                return status.leader
            seen, failures = (member, status.version), 0
            pause_between_polls(self._transport.closed, started, failures, deadline)
        raise NoLeaderError(
            message=f"no node named a leader within {limit:g}s"
            + (f" (last: {last})" if last is not None else "")
        )

    def watch_leadership(self, callback: Callable[[ClientStatus], object]) -> LeadershipWatcher:
        """Call ``callback(status)`` from a thread of its own with the first status, then each
        time the leader or the term changes (a long poll on the nodes, not a busy loop).
        Returns the watch: ``.stop()`` it (closing the client stops it too)."""
        watcher = LeadershipWatcher(self, callback)
        with self._lock:
            self._watchers.append(watcher)
        return watcher

    def _long_poll(
        self, seen: tuple[str, int] | None, wait: float, *, deadline: float | None = None
    ) -> tuple[ClientStatus, str]:
        """The status once it changed since ``seen`` (member, version): from that member
        after a change or ``wait`` seconds; from any member at once when ``seen`` is None.
        With the member to long-poll next."""
        if deadline is None:  # a paused member is left after 2 s past the wait
            deadline = time.monotonic() + wait + LONG_POLL_SLACK
        if seen is None:
            reply = self._transport.request("GET", STATUS_PATH, deadline=deadline)
        else:
            endpoint, version = seen
            reply = self._transport.request(
                "GET",
                LEADERSHIP_PATH,
                params={"after": version, "wait": f"{max(0.0, min(wait, 30.0)):.3f}"},
                endpoint=endpoint,
                deadline=deadline,
                share=False,  # it waits by design
            )
        status = ClientStatus.from_json(reply.body)
        self._transport.note_leader(status.leader)
        # The next long poll goes to the member that answered: by the name it gives itself
        # when that is a configured endpoint, else by the address asked (the token never goes
        # to an address only a node named).
        return status, self._transport.known(status.endpoint) or reply.endpoint

    # -- commands and queries ---------------------------------------------------------------------

    def submit(self, data: bytes, *, timeout: Duration | None = None) -> Outcome:
        """Run a command entry (:func:`catga_sync.fsm.encode_command`'s bytes) through the
        cluster and return its outcome. Sent again to another member on failure, the same
        bytes apply once (their client and seq). CommitTimeoutError (with ``request_id``)
        when the outcome is still unknown at the timeout. UsageError, before anything is sent,
        for an entry without its (client, seq): a retry of it could apply twice."""
        rid = _request_id_of(data)
        if rid is None:
            raise UsageError(
                "ClusterClient.submit() needs a command entry with its session: "
                "encode_command(..., client=, seq=) (as client.state() makes them). Without "
                "its client and seq, a command resent to another member after a lost answer "
                "would be applied twice."
            )
        limit = self.timeout if timeout is None else seconds(timeout)
        delivered: list[bool] = []
        body = {"command": base64.b64encode(data).decode("ascii")}
        try:
            reply = self._transport.request(
                "POST",
                COMMANDS_PATH,
                body=body,
                deadline=time.monotonic() + limit,
                fit=_server_timeout,
                delivered=delivered,
            )
        except (NotLeaderError, LeaderUnreachableError, CommitTimeoutError) as exc:
            if not delivered and not isinstance(exc, CommitTimeoutError):
                raise  # never reached a node that could run it: not applied
            raise CommitTimeoutError(
                f"the command was not answered within {limit:g}s ({exc}); its outcome is "
                "unknown. Retrying with the same request id is safe.",
                rid,
            ) from exc
        return Outcome.from_json(reply.body.get("outcome") or {})

    def query(
        self,
        machine: str,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: Duration | None = None,
    ) -> Any:
        """Run query ``method`` of the state machine named ``machine``, linearizably (a read
        barrier on the node first); its result, or the error it raised."""
        body = {
            "machine": machine,
            "query": method,
            "args": list(args),
            "kwargs": dict(kwargs or {}),
        }
        _check_json(body, f"{machine}.{method}")
        reply = self._transport.request(
            "POST", QUERIES_PATH, body=body, deadline=self._deadline(timeout), fit=_server_timeout
        )
        return Outcome.from_json(reply.body.get("outcome") or {}).unwrap()

    def state(self, machine: type[M] | M, *, timeout: float | None = None) -> RemoteStateHandle[M]:
        """A handle on the state machine ``machine`` (its class, or an instance) as the
        cluster registered it: commands exactly once, linearizable queries, as
        ``node.state(machine)`` inside the cluster."""
        return RemoteStateHandle(self, machine, self.session, timeout=timeout)

    def dict(
        self, name: str | None = None, *, timeout: float | None = None
    ) -> RemoteStateHandle[ReplicatedDict]:
        """The built-in :class:`~catga_sync.kv.ReplicatedDict` (``name``: one registered
        under another name)."""
        return RemoteStateHandle(
            self, ReplicatedDict, self.session, name=name or ReplicatedDict.name, timeout=timeout
        )

    # -- locks ------------------------------------------------------------------------------------

    def acquire(
        self,
        name: str,
        *,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
        owner: str | None = None,
        auto_renew: bool = True,
    ) -> Lease:
        """Acquire lock ``name``, waiting up to ``timeout`` seconds in its queue (None: as long
        as it takes; 0: not at all); LockNotAcquiredError otherwise. Returns the same
        :class:`~catga_sync.locks.Lease` as inside the cluster: the fencing ``token``,
        :meth:`~catga_sync.locks.Lease.is_valid`, ``lost``, renewal every ``ttl / 3`` from a
        thread of its own (unless ``auto_renew`` is off), release."""
        check_name(name)
        ttl_s = check_ttl(seconds(ttl))
        wait = MAX_WAIT if timeout is None else check_wait(seconds(timeout))
        owner = check_owner(_default_owner() if owner is None else owner)
        holder = os.urandom(16).hex()  # the same on every retry: a repeat is no second request
        sent = time.monotonic()
        body = {"name": name, "ttl": ttl_s, "wait": wait, "owner": owner, "holder": holder}
        deadline = sent + wait + self.timeout

        def fit(body: dict[str, Any], remaining: float) -> dict[str, Any]:
            # A retry waits what is left, so the node answers before this client gives up.
            return {**body, "wait": max(0.0, min(wait, remaining - _margin(remaining)))}

        try:
            reply = self._transport.request(
                "POST", LOCK_ACQUIRE_PATH, body=body, deadline=deadline, fit=fit, share=False
            )
            lease = Lease(
                RemoteHolding(self),
                name=name,
                token=int(reply.body["token"]),
                owner=str(reply.body.get("owner", owner)),
                ttl=ttl_s,
                sent=sent,
                auto_renew=auto_renew,
                clock=time.monotonic,
            )
            if lease.valid_until - time.monotonic() < ttl_s / 2:  # a long wait used its clock
                try:
                    lease.renew()
                except LockNotHeldError as exc:
                    raise LockNotAcquiredError(f"lock {name!r} was lost at once: {exc}") from exc
            lease._start()
        except BaseException:  # KeyboardInterrupt too: no grant may stay behind unclaimed
            self._cancel(name, holder)
            raise
        return lease

    def try_acquire(
        self,
        name: str,
        *,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration = 0.0,
        owner: str | None = None,
        auto_renew: bool = True,
    ) -> Lease | None:
        """Like :meth:`acquire`, but None when not acquired; by default it does not wait."""
        try:
            return self.acquire(name, ttl=ttl, timeout=timeout, owner=owner, auto_renew=auto_renew)
        except LockNotAcquiredError:
            return None

    @contextmanager
    def lock(
        self,
        name: str,
        *,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
        owner: str | None = None,
        auto_renew: bool = True,
    ) -> Iterator[Lease]:
        """``with client.lock("nightly-report", ttl=30) as lease:`` — :meth:`acquire` on
        entry, release at exit; LockNotHeldError at exit if the lease was lost meanwhile."""
        lease = self.acquire(name, ttl=ttl, timeout=timeout, owner=owner, auto_renew=auto_renew)
        with lease:
            yield lease

    def _renew(self, name: str, token: int, timeout: float) -> None:
        self._transport.request(
            "POST",
            LOCK_RENEW_PATH,
            body={"name": name, "token": token},
            deadline=time.monotonic() + timeout,
        )

    def _cancel(self, name: str, holder: str) -> None:
        """Withdraw the acquire of ``holder`` (best effort): it leaves the queue, or gives back
        a grant that came after this client gave up, so that the next waiter need not wait
        for its TTL."""
        try:
            self._transport.request(
                "POST",
                LOCK_CANCEL_PATH,
                body={"name": name, "holder": holder},
                deadline=time.monotonic() + min(self.timeout, CANCEL_TIMEOUT),
            )
        except Exception as exc:  # the grant, if any, expires after its TTL
            log.debug("cancelling the acquire of lock %r failed: %s", name, exc)

    def _release(self, name: str, token: int, request_id: str) -> None:
        self._transport.request(
            "POST",
            LOCK_RELEASE_PATH,
            body={"name": name, "token": token, "request_id": request_id},
            deadline=self._deadline(None),
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the leadership watches and close the connections. Leases still held stop
        being renewed (they expire after their TTL): release them first."""
        with self._lock:
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.stop()
        self._transport.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _deadline(self, timeout: Duration | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else seconds(timeout))


def _margin(remaining: float) -> float:
    """Time kept for an answer to travel back, of ``remaining`` seconds."""
    return min(1.0, remaining / 4)


def _server_timeout(body: dict[str, Any], remaining: float) -> dict[str, Any]:
    """``body`` with the time the node may take, so that it answers before this client gives
    up (and says why: no leader, a commit timeout)."""
    return {**body, "timeout": max(0.05, remaining - _margin(remaining))}


def _request_id_of(data: bytes) -> str | None:
    try:
        entry = json.loads(data)
        client, seq = entry.get("c"), entry.get("s")
    except (ValueError, AttributeError):
        return None
    return request_id(client, seq) if isinstance(client, str) and isinstance(seq, int) else None


def _check_json(body: dict[str, Any], what: str) -> None:
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"arguments of {what} must be JSON: {exc}") from None


def _default_owner() -> str:
    owner = f"{socket.gethostname()}/pid {os.getpid()}/{threading.current_thread().name}"
    return owner[:MAX_OWNER] if owner.isprintable() else f"pid {os.getpid()}"
