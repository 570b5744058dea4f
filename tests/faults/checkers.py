"""The safety checkers of the fault harness other than linearizability (``linearizability.py``):
no acknowledged write lost, fencing tokens that order the grants of each lock, leases of one lock
that never overlap, one run of the singleton task per fencing token. Pure: each takes what the
harness recorded (``history.py``) and returns a :class:`~.verdict.Verdict`.

Every check is one-sided, like the linearizability one: it flags only what is certain from the
client's side of the network. A grant happened somewhere between its invoke and its complete,
and the checkers take whichever end of that window makes a violation hardest to claim.

One lock grant may be recorded twice: a holder that asks again (a retry after a timeout) is
answered with the grant it already has, same token. Records of one lock with the same token and
the same owner are therefore one grant, seen from its earliest invoke and its earliest complete;
the same token to two owners is a violation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .history import Grant, Op, TaskStart
from .verdict import Verdict

__all__ = ["fencing", "leases", "lost_writes", "singleton"]


def lost_writes(ops: Iterable[Op], final_reads: Mapping[str, Mapping[str, Any] | None]) -> Verdict:
    """No acknowledged write lost after the heal: every key with an acknowledged create exists
    in ``final_reads`` (key -> the final read, ``{"version", "status"}``, or None when absent),
    at a version no lower than the highest acknowledged cas of that key."""
    created: set[str] = set()
    highest: dict[str, int] = {}
    for op in ops:
        if op.complete is None or op.output is None:
            continue
        if op.f == "create":
            created.add(op.key)
        elif op.f == "cas" and op.output.get("ok") is True:
            version = int(op.output["version"])
            highest[op.key] = max(version, highest.get(op.key, version))
    violations = []
    # A successful cas proves its key was created, even if the create itself timed out.
    for key in sorted(created | highest.keys()):
        acknowledged = highest.get(key)
        what = "its create" if acknowledged is None else f"a cas to version {acknowledged}"
        if key not in final_reads:
            violations.append(f"order {key!r}: {what} was acknowledged, but it was not read back")
            continue
        final = final_reads[key]
        if final is None:
            violations.append(f"order {key!r}: {what} was acknowledged, but it is gone")
        elif acknowledged is not None and int(final["version"]) < acknowledged:
            violations.append(
                f"order {key!r}: {what} was acknowledged, but it is back at version "
                f"{final['version']} ({final.get('status')!r})"
            )
    return Verdict.of("lost writes", violations)


def fencing(grants: Iterable[Grant]) -> Verdict:
    """Per lock: each token names one grant, and the tokens follow real time: if grant ``a``
    completed before grant ``b`` was invoked, ``a.token < b.token``. Locks are checked apart:
    nothing says two locks draw their tokens from one counter."""
    violations: list[str] = []
    for lock, records in _by_lock(grants).items():
        distinct, duplicates = _distinct(lock, records)
        violations.extend(duplicates)
        origin = _origin(records)
        finished = sorted(distinct, key=lambda g: g.complete)
        done = 0
        latest: Grant | None = None  # the largest token among the grants completed so far
        for b in sorted(distinct, key=lambda g: g.invoke):
            while done < len(finished) and finished[done].complete < b.invoke:
                if latest is None or finished[done].token > latest.token:
                    latest = finished[done]
                done += 1
            # Equal tokens here are two owners' (one owner's are merged), reported above.
            if latest is not None and latest.token > b.token:
                violations.append(
                    f"lock {lock!r}: token {b.token} ({b.owner!r}, asked at "
                    f"{b.invoke - origin:.3f}s) is not above token {latest.token} "
                    f"({latest.owner!r}), granted before it, by {latest.complete - origin:.3f}s"
                )
    return Verdict.of("fencing", violations)


def leases(grants: Iterable[Grant], margin: float = 0.0) -> Verdict:
    """No two leases of one lock overlap while both are certainly held.

    A lease is certainly held from its grant's ``complete`` until ``min(invoke + ttl,
    release_invoke)``: the grant came after the invoke, so it expires no earlier than
    invoke + ttl, and a release ends it no later than its invoke. ``margin`` (seconds) shortens
    each interval at its end, for the clocks of the nodes running at other rates than ours."""
    violations: list[str] = []
    for lock, records in _by_lock(grants).items():
        distinct, _ = _distinct(lock, records)
        origin = _origin(records)
        held = sorted(
            (h for h in (_held(g, margin) for g in distinct) if h.start < h.end),
            key=lambda h: h.start,
        )
        longest: _Held | None = None  # the interval so far that ends last
        for h in held:
            if longest is not None and h.start < longest.end:
                a, b = longest.grant, h.grant
                violations.append(
                    f"lock {lock!r}: token {b.token} ({b.owner!r}) held from "
                    f"{h.start - origin:.3f}s while token {a.token} ({a.owner!r}) was "
                    f"certainly held until {longest.end - origin:.3f}s"
                )
            if longest is None or h.end > longest.end:
                longest = h
    return Verdict.of("leases", violations)


def singleton(starts: Iterable[TaskStart], accepted_tokens: Sequence[int]) -> Verdict:
    """One run of the singleton task per epoch: no fencing token started on two nodes; and the
    tokens the fenced resource accepted, in the order it accepted them (the outbox's processed
    list), never decrease."""
    nodes: dict[int, set[str]] = defaultdict(set)
    for start in starts:
        nodes[start.token].add(start.node)
    violations = [
        f"fencing token {token} started on {len(where)} nodes: {', '.join(sorted(where))}"
        for token, where in sorted(nodes.items())
        if len(where) > 1
    ]
    for position in range(1, len(accepted_tokens)):
        before, token = accepted_tokens[position - 1], accepted_tokens[position]
        if token < before:
            violations.append(
                f"the fenced resource accepted token {token} (at position {position}) after "
                f"token {before}"
            )
    return Verdict.of("singleton", violations)


# -- grants ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    grant: Grant
    start: float
    end: float


def _held(grant: Grant, margin: float) -> _Held:
    end = grant.invoke + grant.ttl
    if grant.release_invoke is not None:
        end = min(end, grant.release_invoke)
    return _Held(grant, grant.complete, end - margin)


def _by_lock(grants: Iterable[Grant]) -> dict[str, list[Grant]]:
    locks: dict[str, list[Grant]] = defaultdict(list)
    for grant in grants:
        locks[grant.lock].append(grant)
    return locks


def _origin(grants: Sequence[Grant]) -> float:
    """Times in the messages are seconds from the lock's first invoke."""
    return min(g.invoke for g in grants)


def _distinct(lock: str, grants: Sequence[Grant]) -> tuple[list[Grant], list[str]]:
    """One record per grant (the same token to the same owner is one grant, answered again to a
    retry), and a violation for each token given to more than one owner."""
    by_token: dict[int, list[Grant]] = defaultdict(list)
    for grant in grants:
        by_token[grant.token].append(grant)
    distinct: list[Grant] = []
    violations: list[str] = []
    for token, same in sorted(by_token.items()):
        owners = sorted({g.owner for g in same})
        if len(owners) > 1:
            violations.append(
                f"lock {lock!r}: token {token} granted to {len(owners)} owners: "
                f"{', '.join(map(repr, owners))}"
            )
        for owner in owners:
            distinct.append(_merge([g for g in same if g.owner == owner]))
    return distinct, violations


def _merge(records: Sequence[Grant]) -> Grant:
    """Records of one grant as one: it happened after the earliest invoke (so its lease runs at
    least until then + ttl) and before the earliest complete; the first release ends it."""
    releases = [g.release_invoke for g in records if g.release_invoke is not None]
    first = min(records, key=lambda g: g.invoke)
    return Grant(
        lock=first.lock,
        owner=first.owner,
        token=first.token,
        ttl=first.ttl,
        invoke=first.invoke,
        complete=min(g.complete for g in records),
        release_invoke=min(releases) if releases else None,
    )
