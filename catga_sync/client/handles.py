"""What a :class:`~catga_sync.client.ClusterClient` hands out: a state machine handle, a
leadership watch, and the remote side of a :class:`~catga_sync.locks.Lease`."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ..errors import CatgaError, ClientAuthError
from ..fsm import Outcome, StateMachine
from ..runtime.state import ClientSession, parse_request_id, run_command
from .status import ClientStatus

__all__ = ["LeadershipWatcher", "RemoteHolding", "RemoteStateHandle"]

log = logging.getLogger("catga_sync.client")

M = TypeVar("M", bound=StateMachine)


class _Client(Protocol):
    """What the handles use of a :class:`~catga_sync.client.ClusterClient`."""

    @property
    def closed(self) -> bool: ...

    def submit(self, data: bytes, *, timeout: float | None = None) -> Outcome: ...

    def query(
        self,
        machine: str,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any: ...

    def _long_poll(self, seen: tuple[str, int] | None, wait: float) -> tuple[ClientStatus, str]: ...

    def _renew(self, name: str, token: int, timeout: float) -> None: ...

    def _release(self, name: str, token: int, request_id: str) -> None: ...


WATCH_POLL = 10.0
"""Seconds one long poll of a leadership watch waits for a change (at most 30)."""
LONG_POLL_SLACK = 2.0
"""Seconds a long poll's answer may take past its wait before the member is taken for paused
(and another one is asked)."""
MIN_POLL_INTERVAL = 0.05
"""Seconds at the least from one long poll to the next (a member that answers at once, or
fails at once, is no busy loop)."""


def pause_between_polls(
    stopped: threading.Event, started: float, failures: int, deadline: float | None = None
) -> None:
    """Wait before the next poll: after ``failures`` in a row, a backoff (0.1 s, doubling, at
    most 1 s); else what is left of :data:`MIN_POLL_INTERVAL` since ``started``. Never past
    the (monotonic) ``deadline``; ends early when ``stopped`` is set."""
    now = time.monotonic()
    pause = min(0.05 * 2**failures, 1.0) if failures else MIN_POLL_INTERVAL - (now - started)
    if deadline is not None:
        pause = min(pause, deadline - now)
    if pause > 0:
        stopped.wait(pause)


class RemoteStateHandle(Generic[M]):
    """Calls on one replicated state machine from outside the cluster, as
    :class:`~catga_sync.state.StateHandle` makes them inside: ``handle.<command>(...)`` runs
    through the log exactly once (its request id travels with every retry), and
    ``handle.<query>(...)`` is linearizable (a read barrier on the node, then the query).
    An error the command or query raised is raised here, same type when this process knows
    it. Thread-safe."""

    def __init__(
        self,
        client: _Client,
        machine: type[M] | M,
        session: ClientSession,
        *,
        name: str | None = None,
        timeout: float | None = None,
        fixed_id: tuple[str, int] | None = None,
    ) -> None:
        self._client = client
        self._machine = machine
        kind = machine if isinstance(machine, type) else type(machine)
        self.name: str = name or machine.name or kind.__name__
        """The machine's name in the cluster (its ``name``)."""
        self._kind = kind
        self._session = session
        self._timeout = timeout
        self._fixed_id = fixed_id
        self._commands = kind.commands()
        self._queries = kind.queries()

    def with_request_id(self, key: str) -> RemoteStateHandle[M]:
        """The same handle, with every command carrying request id ``key`` (an idempotency
        key, or the ``request_id`` of a CommitTimeoutError): a repeat returns the first
        outcome instead of running again."""
        return self._copy(self._timeout, parse_request_id(key))

    def with_timeout(self, seconds: float) -> RemoteStateHandle[M]:
        """The same handle, with calls that give up after ``seconds``."""
        return self._copy(seconds, self._fixed_id)

    def _copy(
        self, timeout: float | None, fixed_id: tuple[str, int] | None
    ) -> RemoteStateHandle[M]:
        return RemoteStateHandle(
            self._client,
            self._machine,
            self._session,
            name=self.name,
            timeout=timeout,
            fixed_id=fixed_id,
        )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name in self._commands:
            return lambda *args, **kwargs: run_command(
                self._client.submit,
                self.name,
                name,
                args,
                kwargs,
                self._session,
                self._fixed_id,
                self._timeout,
            )
        if name in self._queries:
            return lambda *args, **kwargs: self._client.query(
                self.name, name, args, kwargs, timeout=self._timeout
            )
        raise AttributeError(
            f"{self._kind.__name__} has no command or query {name!r} "
            f"(commands: {sorted(self._commands)}, queries: {sorted(self._queries)})"
        )


class LeadershipWatcher:
    """A thread long-polling the cluster's leadership for a
    :meth:`~catga_sync.client.ClusterClient.watch_leadership` callback: called with the first
    status, then whenever the leader or the term changes. :meth:`stop` ends it; no callback
    starts after :meth:`stop` returns."""

    def __init__(self, client: _Client, callback: Callable[[ClientStatus], object]) -> None:
        self._client = client
        self._callback = callback
        self._stopped = threading.Event()
        self._calling = threading.RLock()
        self.error: ClientAuthError | None = None
        """Why the watch stopped by itself: the nodes refused the client's token."""
        self._thread = threading.Thread(target=self._run, name="catga-client-watch", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching. With ``timeout``, also wait that long for the thread to end (a long
        poll in flight ends by itself within :data:`WATCH_POLL` seconds)."""
        self._stopped.set()
        with self._calling:  # a callback running now finishes first
            pass
        if timeout is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> LeadershipWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        client = self._client
        last: tuple[object, ...] | None = None
        last_term: int | None = None
        seen: tuple[str, int] | None = None  # (the member asked, its version)
        failures = 0
        started = time.monotonic()
        while not self._stopped.is_set() and not client.closed:
            if last is not None or failures:
                pause_between_polls(self._stopped, started, failures)
            started = time.monotonic()
            try:
                status, member = client._long_poll(seen, WATCH_POLL)
            except ClientAuthError as exc:  # no retry mends a wrong token: stop, say so once
                log.error("leadership watch stopped: %s", exc)  # said before it looks stopped
                self.error = exc
                self._stopped.set()
                return
            except CatgaError as exc:
                failures += 1
                seen = None
                log.debug("leadership watch: no node answered: %s", exc)
                continue
            failures = 0
            seen = (member, status.version)
            current = (status.leader, status.term)
            if current == last or (last_term is not None and status.term < last_term):
                continue  # unchanged, or a member behind the term already reported
            last, last_term = current, status.term
            with self._calling:
                if self._stopped.is_set():
                    return
                try:
                    self._callback(status)
                except Exception:
                    log.exception("leadership watch callback %r failed", self._callback)


class RemoteHolding:
    """A :class:`~catga_sync.locks.Lease`'s grant held from outside the cluster: renewed and
    released over the client routes. The client cannot hear that the lock was freed; a
    renewal refused, or the TTL passing without one, is how its lease ends."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self.event = threading.Event()
        self.reason = ""

    def granted(self) -> bool:
        return True

    def renew(self, name: str, token: int, timeout: float) -> None:
        self._client._renew(name, token, timeout)

    def release(self, name: str, token: int) -> None:
        self._client._release(name, token, uuid.uuid4().hex)

    def close(self) -> None:
        """Nothing to forget: the node kept no watch."""
