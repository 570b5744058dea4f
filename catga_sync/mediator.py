"""A small mediator in Catga's spirit: commands, one handler each, and a pipeline of behaviors.

Commands are dataclasses registered under a name, so they cross the wire as JSON (the fields of
the dataclass, rebuilt with ``cls(**payload)`` after a type check). ``send(command)`` runs the
behaviors around the command's handler and returns what the handler returned::

    mediator = Mediator()

    @mediator.command("create-order")
    @dataclass
    class CreateOrder:
        customer: str
        amount: float

    @mediator.handler(CreateOrder)
    def create_order(cmd: CreateOrder) -> dict:
        return orders.create(cmd.customer, cmd.amount)

    mediator.add_behavior(ForwardToLeaderBehavior(node.coordinator), for_=CreateOrder)
    mediator.send(CreateOrder("ada", 12.5))

A behavior is any callable ``behavior(command, next_) -> result`` that calls ``next_()`` to go
on (or does not, to short-circuit): plain functions and small objects that compose in order,
the way tenacity's stop and wait policies do. The pipeline of a command is every global
behavior (``Mediator(behaviors=[...])``, ``add_behavior(b)``) in the order given, then the
behaviors added ``for_`` its type; the first is the outermost. No threads, no I/O: the
cluster behaviors live in :mod:`catga_sync.forwarding`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import threading
import time
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, overload

from .config_values import Duration, seconds
from .errors import (
    InvalidCommandError,
    RegistrationError,
    UnknownCommandTypeError,
)

__all__ = [
    "Behavior",
    "Dispatch",
    "InvalidCommandError",
    "Mediator",
    "Next",
    "RegistrationError",
    "UnknownCommandTypeError",
    "current_dispatch",
]

C = TypeVar("C")
H = TypeVar("H", bound=Callable[..., Any])
B = TypeVar("B", bound="Behavior")

MAX_NAME_LENGTH = 200

Next = Callable[[], Any]
"""What a behavior calls to run the rest of the pipeline (and the handler); returns its result."""


class Behavior(Protocol):
    """A pipeline step: ``behavior(command, next_) -> result``."""

    def __call__(self, command: Any, next_: Next, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What a behavior may want to know about the ``send`` it runs in (see
    :func:`current_dispatch`)."""

    mediator: Mediator
    command_name: str
    idempotency_key: str | None = None
    """Given by the caller (or by the forwarding endpoint); the same on every retry."""
    forwarded: bool = False
    """True when the command came through a node's forwarding endpoint: it took its one hop
    already and must run here or be refused, never be forwarded again."""
    deadline: float | None = None
    """``time.monotonic()`` by which the caller wants an answer, when it said so."""

    def remaining(self, default: float) -> float:
        """Seconds left until the deadline (``default`` when there is none), never negative."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.monotonic())


_current: ContextVar[Dispatch | None] = ContextVar("catga_dispatch", default=None)


def current_dispatch() -> Dispatch | None:
    """The :class:`Dispatch` of the innermost ``Mediator.send`` running in this context."""
    return _current.get()


@dataclass
class _Registration:
    cls: type
    name: str
    result: Any = None
    handler: Callable[[Any], Any] | None = None
    behaviors: list[Behavior] = field(default_factory=list)


class Mediator:
    """Routes commands to their handler through a pipeline of behaviors. Thread-safe once set
    up; register commands, handlers and behaviors at import or start-up time."""

    def __init__(self, behaviors: Iterable[Behavior] = ()) -> None:
        self._behaviors: list[Behavior] = list(behaviors)
        self._by_type: dict[type, _Registration] = {}
        self._by_name: dict[str, _Registration] = {}
        self._lock = threading.Lock()

    # -- registration ------------------------------------------------------------------------

    @overload
    def command(self, name: type[C], /) -> type[C]: ...

    @overload
    def command(
        self, name: str | None = None, /, *, result: Any = None
    ) -> Callable[[type[C]], type[C]]: ...

    def command(self, name: Any = None, /, *, result: Any = None) -> Any:
        """Class decorator registering a dataclass command under ``name`` (default: the class
        name). ``result`` is the type the handler returns, when it is not plain JSON (a
        dataclass, ``list[Order]``...): forwarded results are rebuilt into it."""
        if isinstance(name, type):
            return self.register(name)

        def decorate(cls: type[C]) -> type[C]:
            return self.register(cls, name, result=result)

        return decorate

    def register(self, cls: type[C], name: str | None = None, *, result: Any = None) -> type[C]:
        """Register the dataclass ``cls`` as a command named ``name``; returns ``cls``."""
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise RegistrationError(
                f"{cls!r} is not a dataclass: commands cross the wire as JSON fields, so "
                "decorate the class with @dataclass (below @mediator.command)"
            )
        name = cls.__name__ if name is None else name
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
            raise RegistrationError(
                f"a command name must be a non-empty string of at most {MAX_NAME_LENGTH} "
                f"characters, not {name!r}"
            )
        with self._lock:
            by_name = self._by_name.get(name)
            if by_name is not None and by_name.cls is not cls:
                raise RegistrationError(
                    f"the command name {name!r} is already taken by {_describe(by_name.cls)}; "
                    "give each command type its own name"
                )
            by_type = self._by_type.get(cls)
            if by_type is not None:
                if by_type.name != name:
                    raise RegistrationError(
                        f"{_describe(cls)} is already registered as {by_type.name!r}"
                    )
                if result is not None:
                    by_type.result = result
                return cls
            registration = _Registration(cls, name, result)
            self._by_type[cls] = registration
            self._by_name[name] = registration
        return cls

    def handler(self, command_type: type[C]) -> Callable[[H], H]:
        """Decorator registering ``fn(command) -> result`` as the handler of ``command_type``
        (registered under its class name first if it is not registered yet)."""

        def decorate(fn: H) -> H:
            self.add_handler(command_type, fn)
            return fn

        return decorate

    def add_handler(self, command_type: type[C], fn: Callable[[C], Any]) -> None:
        if command_type not in self._by_type:
            self.register(command_type)
        registration = self._by_type[command_type]
        with self._lock:
            if registration.handler is not None and registration.handler is not fn:
                raise RegistrationError(
                    f"{_describe(command_type)} already has a handler "
                    f"({_describe(registration.handler)}); a command has exactly one"
                )
            registration.handler = fn

    def add_behavior(self, behavior: B, *, for_: type | Iterable[type] | None = None) -> B:
        """Append ``behavior`` to the pipeline of every command (``for_`` None) or of the given
        command type(s) only — the guide's ``AddLeaderOnlyBehavior<TReq, TRes>()``. Returns
        the behavior."""
        if not callable(behavior):
            raise RegistrationError(
                f"a behavior must be callable(command, next_), not {behavior!r}"
            )
        if for_ is None:
            with self._lock:
                self._behaviors.append(behavior)
            return behavior
        targets = [for_] if isinstance(for_, type) else list(for_)
        for command_type in targets:
            if command_type not in self._by_type:
                self.register(command_type)
        with self._lock:
            for command_type in targets:
                self._by_type[command_type].behaviors.append(behavior)
        return behavior

    # -- sending -----------------------------------------------------------------------------

    def send(
        self,
        command: object,
        *,
        idempotency_key: str | None = None,
        timeout: Duration | None = None,
        forwarded: bool = False,
    ) -> Any:
        """Run ``command`` through its pipeline and handler; return the handler's result.

        ``idempotency_key`` identifies this command across retries (the forward-to-leader
        behavior generates one when absent); ``timeout`` bounds the whole send for behaviors
        that wait (forwarding); ``forwarded`` is set by the forwarding endpoint only. A
        handler's exception propagates unchanged.
        """
        registration = self._registration(type(command))
        handler = registration.handler
        if handler is None:
            raise UnknownCommandTypeError(
                f"command {registration.name!r} ({_describe(registration.cls)}) has no handler: "
                f"register one with @mediator.handler({registration.cls.__name__})"
            )
        pipeline = [*self._behaviors, *registration.behaviors]
        dispatch = Dispatch(
            mediator=self,
            command_name=registration.name,
            idempotency_key=idempotency_key,
            forwarded=forwarded,
            deadline=None if timeout is None else time.monotonic() + seconds(timeout),
        )
        token = _current.set(dispatch)
        try:
            return _run(pipeline, 0, command, handler)
        finally:
            _current.reset(token)

    def has_handler(self, command_type: type) -> bool:
        registration = self._by_type.get(command_type)
        return registration is not None and registration.handler is not None

    # -- names and the wire ------------------------------------------------------------------

    @property
    def commands(self) -> Mapping[str, type]:
        """Every registered command type by name."""
        return {name: r.cls for name, r in self._by_name.items()}

    def name_of(self, command: object) -> str:
        """The registered name of a command (instance or type)."""
        cls = command if isinstance(command, type) else type(command)
        return self._registration(cls).name

    def type_of(self, name: str) -> type:
        registration = self._by_name.get(name) if isinstance(name, str) else None
        if registration is None:
            raise UnknownCommandTypeError(
                f"no command named {name!r} is registered (known: {sorted(self._by_name)}); "
                "register the same commands on every node"
            )
        return registration.cls

    def encode(self, command: object) -> tuple[str, dict[str, Any]]:
        """``(name, payload)``: the command's registered name and its fields as JSON."""
        name = self.name_of(command)
        payload = _to_json(command, name)
        _check_json(payload, f"command {name!r}")
        return name, payload

    def decode(self, name: str, payload: Any) -> Any:
        """The command ``name`` built from its JSON ``payload``, every field type-checked.
        Raises :class:`UnknownCommandTypeError` or :class:`InvalidCommandError`."""
        cls = self.type_of(name)
        try:
            return _from_json(payload, cls, "payload", _hints_cache)
        except _Mismatch as exc:
            raise InvalidCommandError(f"invalid payload for command {name!r}: {exc}") from None

    def encode_result(self, name: str, result: Any) -> Any:
        """The handler's result as JSON (dataclasses become objects of their fields)."""
        value = _to_json(result, f"the result of {name!r}")
        _check_json(value, f"the result of command {name!r}")
        return value

    def decode_result(self, name: str, value: Any) -> Any:
        """A forwarded result, rebuilt into the command's ``result`` type when one was given."""
        registration = self._by_name.get(name)
        if registration is None or registration.result is None:
            return value
        try:
            return _from_json(value, registration.result, "result", _hints_cache)
        except _Mismatch as exc:
            raise InvalidCommandError(f"invalid result for command {name!r}: {exc}") from None

    def _registration(self, cls: type) -> _Registration:
        registration = self._by_type.get(cls)
        if registration is None:
            raise UnknownCommandTypeError(
                f"{_describe(cls)} is not a registered command: decorate it with "
                '@mediator.command("name") or call mediator.register(cls, name=...)'
            )
        return registration


def _run(pipeline: Sequence[Behavior], k: int, command: Any, handler: Callable[[Any], Any]) -> Any:
    if k == len(pipeline):
        return handler(command)
    return pipeline[k](command, lambda: _run(pipeline, k + 1, command, handler))


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}.{qualname}" if module else qualname


# -- JSON <-> dataclasses ------------------------------------------------------------------------


class _Mismatch(Exception):
    """A JSON value that does not fit the declared type (internal; becomes InvalidCommandError)."""


_hints_cache: MutableMapping[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _to_json(value: Any, where: str) -> Any:
    """Dataclasses as objects of their init fields, enums as their value, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _to_json(getattr(value, f.name), where)
            for f in dataclasses.fields(value)
            if f.init
        }
    if isinstance(value, enum.Enum):
        return _to_json(value.value, where)
    if isinstance(value, (list, tuple)):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v, where) for k, v in value.items()}
    return value


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidCommandError(
            f"{what} is not JSON (str, int, float, bool, None, lists, dicts with string keys, "
            f"dataclasses and enums of those): {exc}"
        ) from None


def _field_types(cls: type, cache: MutableMapping[type, dict[str, Any]]) -> dict[str, Any]:
    found = cache.get(cls)
    if found is not None:
        return found
    try:
        found = typing.get_type_hints(cls)
    except Exception:  # a name only the defining function could see: check what resolves
        found = {}
        module = sys.modules.get(cls.__module__)
        namespace = dict(vars(module)) if module is not None else {}
        for f in dataclasses.fields(cls):
            # Evaluating the class's own annotation text, as typing.get_type_hints does.
            try:
                hint = (
                    eval(f.type, namespace, {cls.__name__: cls})
                    if isinstance(f.type, str)
                    else f.type
                )
                found[f.name] = hint
            except Exception:
                found[f.name] = Any
    cache[cls] = found
    return found


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _from_json(value: Any, tp: Any, where: str, cache: MutableMapping[type, dict[str, Any]]) -> Any:
    """``value`` (parsed JSON) checked against, and converted into, the annotation ``tp``."""
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        if value is not None:
            raise _Mismatch(f"{where} must be null, not {_kind(value)}")
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _from_json(value, args[0], where, cache)
    if origin is typing.Union or origin is types.UnionType:
        problems = []
        for arm in args:
            try:
                return _from_json(value, arm, where, cache)
            except _Mismatch as exc:
                problems.append(str(exc))
        raise _Mismatch(" or ".join(problems))
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise _Mismatch(f"{where} must be one of {list(args)!r}, not {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch(f"{where} must be a boolean, not {_kind(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch(f"{where} must be an integer, not {_kind(value)}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Mismatch(f"{where} must be a number, not {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch(f"{where} must be a string, not {_kind(value)}")
        return value
    container = origin or tp
    if container in (list, tuple, set, frozenset, Sequence):
        if not isinstance(value, list):
            raise _Mismatch(f"{where} must be an array, not {_kind(value)}")
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _Mismatch(f"{where} must have {len(args)} items, not {len(value)}")
            return tuple(
                _from_json(v, a, f"{where}[{k}]", cache)
                for k, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_from_json(v, item, f"{where}[{k}]", cache) for k, v in enumerate(value)]
        return items if container in (list, Sequence) else container(items)
    if container in (dict, Mapping):
        if not isinstance(value, dict):
            raise _Mismatch(f"{where} must be an object, not {_kind(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: _from_json(v, item, f"{where}[{k!r}]", cache) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, where, cache)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = [m.value for m in tp]
            raise _Mismatch(f"{where} must be one of {allowed!r}, not {value!r}") from None
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise _Mismatch(f"{where} must be {tp.__name__}, not {_kind(value)}")
        return value
    return value  # a typing construct we do not check (a TypeVar, a Protocol...)


def _build(cls: type, value: Any, where: str, cache: MutableMapping[type, dict[str, Any]]) -> Any:
    if not isinstance(value, dict):
        raise _Mismatch(f"{where} must be an object of {cls.__name__}'s fields, not {_kind(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _Mismatch(f"{where} has unknown field(s) {unknown} (fields: {sorted(fields)})")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in value
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise _Mismatch(f"{where} is missing field(s) {missing}")
    hints = _field_types(cls, cache)
    kwargs = {
        name: _from_json(v, hints.get(name, Any), f"{where}.{name}", cache)
        for name, v in value.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own validation (__post_init__)
        raise _Mismatch(f"{where} was refused by {cls.__name__}: {exc}") from None
