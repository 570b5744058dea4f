"""A linearizability checker for the histories the fault harness records, and the model of the
example's orders it checks them against. Pure: no I/O, no clock, no threads.

A history is linearizable when every operation can be given one instant between its invoke and
its complete such that, taken in the order of those instants, the operations are a run of the
sequential model (Herlihy & Wing 1990). The search is the Wing & Gong algorithm (1993) with the
memoization of Lowe ("Testing for linearizability", 2017), as Porcupine (Anish Athalye,
github.com/anishathalye/porcupine) implements it:

- The calls and returns, sorted by time, form a doubly linked list (a call before a return at
  the same instant: the two ops count as concurrent).
- A depth-first search walks it: at a call, try to linearize that op now (the model accepts it
  in the current state); if so, lift its call and return out of the list, push, and restart
  from the head. At a return, the op it closes had to take effect by then and has not: undo
  the last choice and try the next candidate.
- A cache of (the set of linearized ops, as a bitmask, and the model state) prunes every
  branch that reaches a configuration already explored: two orders that linearize the same ops
  into the same state have the same futures.
- One pruning of ours: an op that is legal now and leaves the state as it is (a read, a version
  conflict) is linearized now and no alternative is tried at that point, since any valid order
  stays valid with it moved there (the argument is in ``_search``). Without it, k concurrent
  reads of one state make 2^k configurations.

P-compositionality (Horn & Kroening 2015; Porcupine's ``Partition``): linearizability is local,
so a history over independent keys is linearizable iff the sub-history of each key is. Each key
is searched alone: the costs of the keys add up instead of multiplying, and bitmasks stay small.

An indeterminate op (``complete`` None: a timeout, a reset connection) returns at +infinity with
any output: it may be linearized anywhere after its invoke, and, since nothing forces it, it may
also be left out at the end (it never took effect). The search succeeds when every op that did
return is linearized.

The search is exponential in the worst case; ``max_steps`` bounds it, and running out raises
:class:`SearchBudgetExceeded` (no verdict) instead of hanging the test run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .history import Op
from .verdict import Verdict

__all__ = [
    "DEFAULT_MAX_STEPS",
    "Model",
    "OrderState",
    "OrdersModel",
    "SearchBudgetExceeded",
    "TimedOp",
    "check_linearizable",
    "check_orders",
]

DEFAULT_MAX_STEPS = 2_000_000
"""Search steps allowed per key: several seconds of CPython. A few hundred ops per key at
concurrency 5 need a few thousand, passing or failing."""


class TimedOp(Protocol):
    """What the checker reads of an op: when it was invoked and when (if ever) it returned."""

    @property
    def invoke(self) -> float: ...

    @property
    def complete(self) -> float | None: ...


StateT = TypeVar("StateT", bound=Hashable)
OpT = TypeVar("OpT", bound=TimedOp)
OpT_contra = TypeVar("OpT_contra", bound=TimedOp, contravariant=True)


class Model(Protocol[StateT, OpT_contra]):
    """A sequential specification, in Porcupine's shape. States must be hashable (the cache
    keys on them) and immutable. ``step`` is deterministic: an op's output, recorded in the op,
    decides which transition it took. An indeterminate op (no output) need only be legal where
    it changes the state: the search already tries leaving it out, which is its no-op."""

    def init(self) -> StateT:
        """The state before any op."""
        ...

    def step(self, state: StateT, op: OpT_contra) -> tuple[bool, StateT]:
        """Whether ``op`` (with its recorded output) is legal in ``state``, and the state after."""
        ...

    def partition_key(self, op: OpT_contra) -> Hashable:
        """The independent object ``op`` touches (ops of different keys never interact)."""
        ...

    def describe_op(self, op: OpT_contra) -> str: ...

    def describe_state(self, state: StateT) -> str: ...


class SearchBudgetExceeded(RuntimeError):
    """The search ran out of steps before a verdict: the history is too large or too concurrent
    for this bound (raise ``max_steps``, or record shorter or less concurrent runs)."""


def check_linearizable(
    history: Sequence[OpT],
    model: Model[StateT, OpT],
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> Verdict:
    """Whether ``history`` is linearizable with respect to ``model``; one violation per key
    that is not, with the longest linearizable prefix found as the counterexample."""
    partitions: dict[Hashable, list[OpT]] = defaultdict(list)
    for op in history:
        complete = op.complete
        if complete is not None and complete < op.invoke:
            raise ValueError(f"an op completes before it is invoked: {op!r}")
        partitions[model.partition_key(op)].append(op)
    violations = []
    for key, ops in partitions.items():
        failure = _search(ops, model, max_steps, key)
        if failure is not None:
            violations.append(_explain(key, ops, model, failure))
    return Verdict.of("linearizability", violations)


# -- the search ------------------------------------------------------------------------------

_NIL = -1
_HEAD = 0


@dataclass(frozen=True, slots=True)
class _Failure(Generic[StateT]):
    """The deepest point the search reached: ``prefix`` (indices into the key's ops, in
    linearization order) leads to ``state``, where the op ``blocked`` had to have taken effect
    (its return came) and none of ``pending`` (the ops invoked by then) could be applied."""

    prefix: tuple[int, ...]
    state: StateT
    blocked: int
    pending: tuple[int, ...]


def _search(
    ops: Sequence[OpT], model: Model[StateT, OpT], max_steps: int, key: Hashable
) -> _Failure[StateT] | None:
    """Wing & Gong's search with Lowe's cache over one key's ops; None if linearizable."""
    # Events: (time, 0 = call / 1 = return, op). A call sorts before a return at the same time,
    # so ops that merely touch count as concurrent; an indeterminate op returns at +infinity.
    events = []
    for index, op in enumerate(ops):
        complete = op.complete
        events.append((op.invoke, 0, index))
        events.append((math.inf if complete is None else complete, 1, index))
    events.sort()

    # The list, as arrays: node 0 is the head sentinel, node i + 1 is events[i].
    size = len(events) + 1
    nxt = [*range(1, size), _NIL]
    prv = [_NIL, *range(size - 1)]
    op_of = [-1] * size
    is_call = [False] * size
    endless = [False] * size  # the return of an indeterminate op
    return_of: dict[int, int] = {}
    call_node: dict[int, int] = {}
    for node, (time, kind, index) in enumerate(events, start=1):
        op_of[node] = index
        if kind == 0:
            is_call[node] = True
            call_node[index] = node
        else:
            endless[node] = time == math.inf
            return_of[call_node[index]] = node

    def lift(call: int) -> None:
        for node in (call, return_of[call]):
            nxt[prv[node]] = nxt[node]
            if nxt[node] != _NIL:
                prv[nxt[node]] = prv[node]

    def unlift(call: int) -> None:
        # Dancing links: put back in the reverse order of removal.
        for node in (return_of[call], call):
            nxt[prv[node]] = node
            if nxt[node] != _NIL:
                prv[nxt[node]] = node

    state = model.init()
    linearized = 0
    cache: set[tuple[int, StateT]] = {(linearized, state)}
    # The choices made: (call node linearized, state before it, whether the op left the state
    # as it was, which makes it the only choice worth trying there; see below).
    stack: list[tuple[int, StateT, bool]] = []
    best_depth = -1
    failure: _Failure[StateT] | None = None
    steps = 0
    entry = nxt[_HEAD]
    while entry != _NIL:
        steps += 1
        if steps > max_steps:
            raise SearchBudgetExceeded(
                f"key {key!r}: no verdict after {max_steps} search steps over {len(ops)} ops; "
                "raise max_steps or check a shorter history"
            )
        if is_call[entry]:
            index = op_of[entry]
            ok, after = model.step(state, ops[index])
            if not ok:
                entry = nxt[entry]
                continue
            # An op legal now that leaves the state as it is (a read, a conflict) can always
            # go now: any linearization that puts it later still works with it moved here (the
            # others see the same states, and all it must follow are linearized already, their
            # returns preceding its call). So when this choice fails, or was explored and
            # failed, so does the configuration: no other candidate needs trying. Without this,
            # k concurrent reads of one state would make 2^k configurations.
            keeps = after == state
            reached = (linearized | (1 << index), after)
            if reached not in cache:
                cache.add(reached)
                stack.append((entry, state, keeps))
                state = after
                linearized = reached[0]
                lift(entry)
                entry = nxt[_HEAD]
                continue
            if not keeps:
                entry = nxt[entry]
                continue
        elif endless[entry]:
            # Every op that returned is linearized (their returns all sort before this one);
            # the indeterminate ones still pending are left out: they never took effect.
            return None
        elif len(stack) > best_depth:
            # The op this return closes had to take effect by now, and did not in this branch:
            # the deepest such point is the counterexample.
            best_depth = len(stack)
            pending = []
            node = nxt[_HEAD]
            while node != entry:
                if is_call[node]:
                    pending.append(op_of[node])
                node = nxt[node]
            failure = _Failure(
                prefix=tuple(op_of[call] for call, _, _ in stack),
                state=state,
                blocked=op_of[entry],
                pending=tuple(pending),
            )
        # This configuration fails: undo the last choice (and the one before a choice that was
        # the only one worth trying) and try the next candidate.
        while True:
            if not stack:
                # A failure was recorded: every backtrack starts at a return, or at a
                # configuration explored before (which failed at a return).
                assert failure is not None
                return failure
            entry, state, only = stack.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            if not only:
                break
        entry = nxt[entry]
    return None


_PREFIX_SHOWN = 12
"""The last ops of the prefix a counterexample lists: the state they reach says the rest."""


def _explain(
    key: Hashable, ops: Sequence[OpT], model: Model[StateT, OpT], failure: _Failure[StateT]
) -> str:
    """The counterexample, in the shape Knossos and Porcupine give: the longest prefix that does
    linearize, the op that then cannot take effect in time, and what else was pending."""
    origin = min(op.invoke for op in ops)

    def when(op: OpT) -> str:
        complete = op.complete
        end = "?" if complete is None else f"{complete - origin:.3f}"
        return f"[{op.invoke - origin:.3f}, {end}]"

    def line(index: int) -> str:
        return f"{model.describe_op(ops[index])} {when(ops[index])}"

    lines = [
        f"key {key!r}: not linearizable ({len(ops)} ops; times in seconds from its first invoke)",
        f"  longest linearizable prefix ({len(failure.prefix)} ops):",
    ]
    state = model.init()
    hidden = max(0, len(failure.prefix) - _PREFIX_SHOWN)
    for position, index in enumerate(failure.prefix, start=1):
        _, state = model.step(state, ops[index])
        if position == hidden:
            lines.append(f"    ({hidden} earlier ops, to state {model.describe_state(state)})")
        elif position > hidden:
            lines.append(f"    {position}. {line(index)}  => {model.describe_state(state)}")
    lines.append(
        f"  then {line(failure.blocked)} must have taken effect by its return, but in state "
        f"{model.describe_state(failure.state)} none of the ops pending then can:"
    )
    for index in failure.pending:
        ok, after = model.step(failure.state, ops[index])
        why = (
            f"would lead to {model.describe_state(after)}, from where the rest cannot linearize"
            if ok
            else "not legal in this state"
        )
        lines.append(f"    {line(index)}: {why}")
    done = set(failure.prefix)
    rest = [i for i in range(len(ops)) if i not in done and i != failure.blocked]
    if rest:
        lines.append(f"  not linearized either ({len(rest)} ops):")
        lines.extend(f"    {line(index)}" for index in rest)
    return "\n".join(lines)


# -- the orders of example_flask ---------------------------------------------------------------

OrderState = tuple[int, str] | None
"""One order: None before it exists, else (version, status)."""


class OrdersModel:
    """The example's OrderSystem, one order per key: create, read, and the compare-and-set of
    an update (``expected_version``), with the outputs :class:`~.history.Op` documents."""

    def init(self) -> OrderState:
        return None

    def step(self, state: OrderState, op: Op) -> tuple[bool, OrderState]:
        out = op.output
        if op.f == "create":
            created = (1, "created")
            legal = state is None and (out is None or _is_order(out, created))
            return legal, created if legal else state
        if op.f == "read":
            if out is None:
                return True, state  # legal anywhere; check_orders leaves these out
            if out.get("found") is False:
                return state is None, state
            return state is not None and _is_order(out, state), state
        if op.f == "cas":
            value = op.value or {}
            expected, status = value.get("expected_version"), value.get("status")
            matches = state is not None and state[0] == expected
            if out is None:
                # Only as applied: a conflict or a not-found changes nothing, the same as
                # leaving the op out, which the search does already; taking it also as a no-op
                # would double the configurations to explore for each such op.
                if matches and isinstance(expected, int) and isinstance(status, str):
                    return True, (expected + 1, status)
                return False, state
            if out.get("ok") is True:
                if matches and isinstance(expected, int) and isinstance(status, str):
                    written = (expected + 1, status)
                    return _is_order(out, written), written
                return False, state
            if out.get("not_found") is True:
                return state is None, state
            # A conflict: it read the current version, which differs from the expected one.
            return (
                state is not None and not matches and out.get("current_version") == state[0],
                state,
            )
        raise ValueError(f"unknown op {op.f!r} (create, read or cas): {op!r}")

    def partition_key(self, op: Op) -> Hashable:
        return op.key

    def describe_op(self, op: Op) -> str:
        call = op.f
        if op.f == "cas" and op.value is not None:
            call = f"cas(v{op.value.get('expected_version')} -> {op.value.get('status')!r})"
        return f"p{op.process} {call} -> {_describe_output(op)}"

    def describe_state(self, state: OrderState) -> str:
        return "absent" if state is None else f"v{state[0]} {state[1]!r}"


def check_orders(ops: Sequence[Op], *, max_steps: int = DEFAULT_MAX_STEPS) -> Verdict:
    """Whether the orders history is linearizable, key by key, against :class:`OrdersModel`."""
    # An indeterminate read allows any output and changes nothing: it constrains no order of
    # the others, and each one would double the states to explore. Leave them out.
    kept = [op for op in ops if not (op.f == "read" and op.complete is None)]
    return check_linearizable(kept, OrdersModel(), max_steps=max_steps)


def _is_order(out: Mapping[str, Any], state: tuple[int, str]) -> bool:
    return out.get("version") == state[0] and out.get("status") == state[1]


def _describe_output(op: Op) -> str:
    out = op.output
    if out is None:
        return "? (indeterminate)"
    if op.f == "read" and out.get("found") is False:
        return "not found"
    if op.f == "cas" and out.get("ok") is False:
        if out.get("not_found") is True:
            return "not found"
        return f"conflict (current v{out.get('current_version')})"
    return f"v{out.get('version')} {out.get('status')!r}"
