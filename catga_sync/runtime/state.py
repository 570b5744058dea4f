"""Calling replicated state machines from any node: ``orders = cluster.state(Orders)``.

``orders.create(...)`` runs the ``create`` command through the Raft log — from a follower it is
forwarded to the leader — and returns its result once the entry is applied on *this* node; an
error raised by the command is raised here, same type, same message. ``orders.get(...)`` runs a
query after a linearizable read barrier; ``orders.local.get(...)`` reads this node's state as
it is, without asking the leader (faster, possibly stale).

Every command carries a request id (client, seq) so that retries after a lost answer or a
leader change apply it once. ``orders.with_request_id(key).create(...)`` uses your own id — an
HTTP ``Idempotency-Key``, say — so that a client retrying from outside is deduplicated too.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..errors import CommitTimeoutError, InvalidRequestIdError
from ..fsm import StateMachine, encode_command

if TYPE_CHECKING:
    from ..fsm import Outcome

M = TypeVar("M", bound=StateMachine)
T = TypeVar("T")


class _Node(Protocol):
    """What a handle needs of a node (a part of its NodeHandle)."""

    def submit(self, data: bytes, *, timeout: float | None = None) -> Outcome: ...

    def query(
        self,
        machine: str,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        linearizable: bool = True,
    ) -> Any: ...


OUTSTANDING_GRACE = 60.0
"""Seconds a timed-out request stays unacknowledged, so that retrying it stays exactly-once."""


class ClientSession:
    """This process's client identity: a client id and a sequence of request numbers.

    The lowest request still waiting for its answer is sent along as ``ack`` so the cluster can
    forget every older outcome (Raft thesis §6.3).
    """

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self._seq = itertools.count(1)
        self._outstanding: dict[int, float] = {}
        self._lock = threading.Lock()

    def begin(self) -> tuple[int, int]:
        """A new sequence number, and the ``ack`` to send with it."""
        with self._lock:
            seq = next(self._seq)
            now = time.monotonic()
            for old, expires in list(self._outstanding.items()):
                if expires and expires < now:
                    del self._outstanding[old]
            self._outstanding[seq] = 0.0
            return seq, min(self._outstanding)

    def finish(self, seq: int, *, answered: bool) -> None:
        with self._lock:
            if answered:
                self._outstanding.pop(seq, None)
            else:  # keep it unacknowledged a while: the caller may retry with its request id
                self._outstanding[seq] = time.monotonic() + OUTSTANDING_GRACE


def request_id(client: str, seq: int) -> str:
    return f"{client}#{seq}"


def parse_request_id(value: str) -> tuple[str, int]:
    """``client#seq`` (as CommitTimeoutError reports it) or any other string (seq 0)."""
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidRequestIdError(
            "a request id must be a non-empty string of at most 200 characters"
        )
    client, sep, seq = value.rpartition("#")
    if sep and client and seq.isdigit():
        return client, int(seq)
    return f"id:{value}", 0


class StateHandle(Generic[M]):
    """Calls on one replicated state machine through one node. Thread-safe."""

    def __init__(
        self,
        node: _Node,
        machine: M,
        session: ClientSession,
        *,
        timeout: float | None = None,
        fixed_id: tuple[str, int] | None = None,
    ) -> None:
        self._node = node
        self._machine = machine
        self._name = machine.name or type(machine).__name__
        self._session = session
        self._timeout = timeout
        self._fixed_id = fixed_id
        self._commands = type(machine).commands()
        self._queries = type(machine).queries()

    @property
    def machine(self) -> M:
        """The local state machine instance (read it only through queries)."""
        return self._machine

    @property
    def local(self) -> LocalQueries[M]:
        """Queries on this node's state as it is now: fast, possibly stale."""
        return LocalQueries(self._node, self._machine, self._name)

    def with_request_id(self, key: str) -> StateHandle[M]:
        """The same handle, with every command carrying request id ``key``: a command with an
        id the cluster has seen returns the first outcome instead of running again."""
        return StateHandle(
            self._node,
            self._machine,
            self._session,
            timeout=self._timeout,
            fixed_id=parse_request_id(key),
        )

    def with_timeout(self, seconds: float) -> StateHandle[M]:
        return StateHandle(
            self._node, self._machine, self._session, timeout=seconds, fixed_id=self._fixed_id
        )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name in self._commands:
            return lambda *args, **kwargs: self._command(name, args, kwargs)
        if name in self._queries:
            return lambda *args, **kwargs: self._query(name, args, kwargs)
        raise AttributeError(
            f"{type(self._machine).__name__} has no command or query {name!r} "
            f"(commands: {sorted(self._commands)}, queries: {sorted(self._queries)})"
        )

    def _command(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        submit = self._node.submit
        return run_command(
            submit, self._name, method, args, kwargs, self._session, self._fixed_id, self._timeout
        )

    def _query(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._node.query(self._name, method, args, kwargs, timeout=self._timeout)


def run_command(
    submit: Callable[..., Outcome],
    machine: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    session: ClientSession,
    fixed_id: tuple[str, int] | None,
    timeout: float | None,
) -> Any:
    """Run command ``machine.method(*args, **kwargs)`` through ``submit(data, timeout=...)``
    (a node's, or a :class:`~catga_sync.client.ClusterClient`'s) under the request id
    ``fixed_id``, else the next of ``session``; its result, or its error raised. A
    CommitTimeoutError names the request id to retry with."""
    if fixed_id is not None:
        client, seq = fixed_id
        ack = None
    else:
        client = session.client_id
        seq, ack = session.begin()
    data = encode_command(
        machine, method, args, kwargs, client=client, seq=seq, ack=ack, time=time.time()
    )
    answered = False
    try:
        outcome = submit(data, timeout=timeout)
        answered = True
    except CommitTimeoutError as exc:
        rid = request_id(client, seq)
        raise CommitTimeoutError(
            f"{exc} Request id: {rid} (pass it to with_request_id() to retry)", rid
        ) from exc
    finally:
        if fixed_id is None:
            session.finish(seq, answered=answered)
    return outcome.unwrap()


class LocalQueries(Generic[M]):
    """Queries answered from this node's state without a read barrier."""

    def __init__(self, node: _Node, machine: M, name: str) -> None:
        self._node = node
        self._machine = machine
        self._name = name
        self._queries = type(machine).queries()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in self._queries:
            raise AttributeError(f"{type(self._machine).__name__} has no query {name!r}")
        return lambda *args, **kwargs: self._node.query(
            self._name, name, args, kwargs, linearizable=False
        )
