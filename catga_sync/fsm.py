"""The replicated state: application state machines and the client session table, applied in
log order on every node. Pure: no threads, no clock, no I/O — every input is in the entry.

A command travels in the log as JSON::

    {"m": "orders", "op": "create", "a": [...], "k": {...},
     "c": "client id", "s": 17, "ack": 12, "t": 1764150000.25}

``c``/``s`` identify it for exactly-once application (Raft thesis §6.3): a repeated
(client, seq) is answered with the first outcome and not applied again. ``ack`` is the lowest
sequence number the client still waits for, so older outcomes can be forgotten; a session
idle for longer than the session TTL (measured in entry time ``t``, the proposer's clock,
never going backwards) is dropped.
"""

from __future__ import annotations

import builtins
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .errors import (
    AlreadyRegisteredError,
    CommandError,
    InvalidMessageError,
    RequestExpiredError,
    UnknownCommandError,
    UsageError,
)

F = TypeVar("F", bound=Callable[..., Any])

SNAPSHOT_FORMAT = 1


def command(method: F) -> F:
    """Mark a :class:`StateMachine` method as a command: it changes state, travels through the
    Raft log and runs on every node in log order. It must be deterministic."""
    method.__catga_kind__ = "command"  # type: ignore[attr-defined]
    return method


def query(method: F) -> F:
    """Mark a :class:`StateMachine` method as a query: it reads state on the local node only."""
    method.__catga_kind__ = "query"  # type: ignore[attr-defined]
    return method


class StateMachine:
    """Base class of replicated state machines.

    Subclass it, give it a unique ``name``, mark the methods that change state with
    :func:`command` and those that read it with :func:`query`. Arguments, results and the
    snapshot are JSON. ``apply`` must be deterministic: the same commands in the same order
    give the same state on every node (no clock, no randomness, no I/O — the entry time is
    available as :attr:`now` for expiry logic, the entry's log index as :attr:`entry_index`).

    The default :meth:`snapshot` and :meth:`restore` save the instance's public attributes;
    override them when the state is not plain JSON.
    """

    name: ClassVar[str] = ""

    now: float = 0.0
    """The time of the entry being applied (the proposer's clock; never goes backwards)."""

    entry_index: int = 0
    """The log index of the entry being applied: the same on every node, and increasing (a
    fencing token, say)."""

    def snapshot(self) -> Any:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in _CONTEXT}

    def restore(self, state: Any) -> None:
        for key in [k for k in vars(self) if not k.startswith("_") and k not in _CONTEXT]:
            delattr(self, key)
        for key, value in state.items():
            setattr(self, key, value)

    @classmethod
    def commands(cls) -> frozenset[str]:
        return _methods_of_kind(cls, "command")

    @classmethod
    def queries(cls) -> frozenset[str]:
        return _methods_of_kind(cls, "query")


_CONTEXT = frozenset({"now", "entry_index"})
"""Attributes ReplicatedState sets before each command: not state, not in snapshots."""

_KINDS: dict[tuple[type, str], frozenset[str]] = {}
"""Cached per class: the apply path asks for every entry, and dir() costs ~70 µs."""


def _methods_of_kind(cls: type, kind: str) -> frozenset[str]:
    found = _KINDS.get((cls, kind))
    if found is None:
        found = _KINDS[cls, kind] = frozenset(
            name
            for name in dir(cls)
            if not name.startswith("_")
            and getattr(getattr(cls, name), "__catga_kind__", None) == kind
        )
    return found


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a command gave: a JSON result, or an error by type name and message."""

    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    error: BaseException | None = field(default=None, compare=False)
    """The exception itself, on the node that applied it (not across the wire)."""

    def to_json(self) -> dict[str, Any]:
        if self.error_type is None:
            return {"result": self.result}
        return {"error": {"type": self.error_type, "message": self.error_message}}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Outcome:
        if "error" in obj:
            error = obj["error"]
            return cls(error_type=str(error["type"]), error_message=str(error["message"]))
        return cls(result=obj.get("result"))

    @classmethod
    def coerce(cls, value: Any) -> Outcome:
        """``value`` if it is an Outcome, else a successful Outcome holding it."""
        return value if isinstance(value, Outcome) else cls(result=value)

    def unwrap(self) -> Any:
        """The result, or the error raised as the same type with the same message."""
        if self.error_type is None:
            return self.result
        if self.error is not None:
            raise self.error
        raise rebuild_error(self.error_type, self.error_message or "")


def error_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}:{cls.__qualname__}"
    )


def rebuild_error(type_name: str, message: str) -> BaseException:
    """An exception of the named type with ``message``: builtins and classes of modules this
    process has already imported (never imports anything); otherwise a CommandError."""
    module_name, _, qualname = type_name.rpartition(":")
    owner: Any = sys.modules.get(module_name) if module_name else builtins
    for part in qualname.split("."):
        owner = getattr(owner, part, None) if owner is not None else None
    if isinstance(owner, type) and issubclass(owner, Exception):
        try:
            return owner(message)
        except Exception:  # a constructor with other arguments
            pass
    return CommandError(type_name, message)


# --------------------------------------------------------------------------------------------


def encode_command(
    machine: str,
    method: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: Mapping[str, Any],
    *,
    client: str | None,
    seq: int | None,
    ack: int | None,
    time: float,
) -> bytes:
    """The log entry data of a command. Raises TypeError when an argument is not JSON."""
    body: dict[str, Any] = {"m": machine, "op": method, "a": list(args), "k": dict(kwargs)}
    if client is not None:
        body.update(c=client, s=seq, ack=ack)
    body["t"] = time
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"arguments of {machine}.{method} must be JSON (str, int, float, bool, None, "
            f"lists and dicts with string keys): {exc}"
        ) from None


@dataclass
class _Session:
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_seen: float = 0.0
    floor: int = 0
    """Outcomes below this sequence number were forgotten (the client acknowledged them)."""


class ReplicatedState:
    """Every registered state machine plus the session table, as one deterministic machine."""

    def __init__(self, *, session_ttl: float = 3600.0) -> None:
        self.machines: dict[str, StateMachine] = {}
        self.sessions: dict[str, _Session] = {}
        self.session_ttl = session_ttl
        self.time = 0.0
        self.applied = 0

    def register(self, machine: StateMachine) -> StateMachine:
        name = machine.name or type(machine).__name__
        if not isinstance(name, str) or not name:
            raise UsageError(f"{type(machine).__name__} needs a non-empty `name`")
        if name in self.machines:
            raise AlreadyRegisteredError(
                f"a state machine named {name!r} is already registered "
                f"({type(self.machines[name]).__name__}); give each a unique `name`"
            )
        self.machines[name] = machine
        return machine

    # -- applying ------------------------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> Outcome:
        """Apply one command entry; a repeated (client, seq) returns its first outcome."""
        self.applied = index
        try:
            body = json.loads(data)
            machine_name, method_name = body["m"], body["op"]
            args, kwargs = body.get("a", []), body.get("k", {})
            entry_time = float(body.get("t", 0.0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _failure(UnknownCommandError(f"malformed command entry {index}: {exc}"))
        self.time = max(self.time, entry_time)
        client, seq = body.get("c"), body.get("s")
        session = self._session(client, body.get("ack")) if isinstance(client, str) else None
        if session is not None and isinstance(seq, int):
            if seq in session.outcomes:
                return Outcome.from_json(session.outcomes[seq])
            if seq < session.floor:
                return _failure(
                    RequestExpiredError(
                        f"request {client}#{seq} was already acknowledged and forgotten; "
                        "whether it ran is unknown"
                    )
                )
        outcome = self._run(machine_name, method_name, args, kwargs)
        if session is not None and isinstance(seq, int):
            session.outcomes[seq] = outcome.to_json()
        self._expire_sessions()
        return outcome

    def _run(self, machine_name: str, method_name: str, args: Any, kwargs: Any) -> Outcome:
        machine = self.machines.get(machine_name)
        if machine is None or method_name not in type(machine).commands():
            return _failure(
                UnknownCommandError(f"no command {machine_name}.{method_name} is registered")
            )
        machine.now = self.time
        machine.entry_index = self.applied
        try:
            result = getattr(machine, method_name)(*args, **kwargs)
            if type(result) not in _JSON_SCALARS:  # those are JSON as they are: skip the encode
                json.dumps(result, allow_nan=False)
        except Exception as exc:  # the state stays as apply left it, on every node alike
            return _failure(exc)
        return Outcome(result=result)

    def _session(self, client: str, ack: Any) -> _Session:
        # Re-inserted at the end: the table stays ordered by last_seen (entry time never goes
        # backwards), so expiry only looks at its front.
        session = self.sessions.pop(client, None) or _Session()
        self.sessions[client] = session
        session.last_seen = self.time
        if isinstance(ack, int) and ack > session.floor:
            session.floor = ack
            for seq in [s for s in session.outcomes if s < ack]:
                del session.outcomes[seq]
        return session

    def _expire_sessions(self) -> None:
        horizon = self.time - self.session_ttl
        sessions = self.sessions
        while sessions:
            oldest = next(iter(sessions))
            if sessions[oldest].last_seen >= horizon:
                return
            del sessions[oldest]

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        body = {
            "format": SNAPSHOT_FORMAT,
            "time": self.time,
            "applied": self.applied,
            "sessions": {
                client: {
                    "seen": s.last_seen,
                    "floor": s.floor,
                    "outcomes": {str(k): v for k, v in s.outcomes.items()},
                }
                for client, s in self.sessions.items()
            },
            "machines": {name: m.snapshot() for name, m in self.machines.items()},
        }
        # Not sort_keys: a restored node must iterate its dicts in the order every other node
        # does (the order the log inserted their keys), or a command that takes "the first
        # pending one" would pick another item there. That order is the same on every node.
        return json.dumps(body, separators=(",", ":")).encode()

    def restore(self, data: bytes) -> None:
        body = json.loads(data)
        if body.get("format") != SNAPSHOT_FORMAT:
            raise InvalidMessageError(f"unknown snapshot format {body.get('format')!r}")
        self.time = float(body["time"])
        self.applied = int(body["applied"])
        sessions = [
            (
                client,
                _Session(
                    {int(k): v for k, v in s["outcomes"].items()}, float(s["seen"]), int(s["floor"])
                ),
            )
            for client, s in body["sessions"].items()
        ]
        sessions.sort(key=lambda item: item[1].last_seen)  # the order _expire_sessions needs
        self.sessions = dict(sessions)
        for name, state in body["machines"].items():
            machine = self.machines.get(name)
            if machine is not None:
                machine.restore(state)


_JSON_SCALARS = (type(None), bool, int, str)


def _failure(exc: BaseException) -> Outcome:
    return Outcome(error_type=error_type_name(exc), error_message=str(exc), error=exc)
