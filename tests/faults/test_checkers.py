"""The checkers of the fault harness pass good histories and fail known bad ones.

The linearizability checker is also run on random histories (a sequential run of the orders
model, each op given an interval around its instant so that they overlap), which must pass, and
on the same histories with one output changed, checked against a brute-force search.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from .checkers import fencing, leases, lost_writes, singleton
from .history import Grant, Op, TaskStart
from .linearizability import (
    OrdersModel,
    OrderState,
    SearchBudgetExceeded,
    check_linearizable,
    check_orders,
)
from .verdict import Verdict

# -- building histories ------------------------------------------------------------------------


def create(p: int, key: str, invoke: float, complete: float | None) -> Op:
    out = None if complete is None else {"version": 1, "status": "created"}
    return Op(p, "create", key, None, out, invoke, complete)


def read(p: int, key: str, version: int, status: str, invoke: float, complete: float) -> Op:
    out = {"found": True, "version": version, "status": status}
    return Op(p, "read", key, None, out, invoke, complete)


def read_absent(p: int, key: str, invoke: float, complete: float) -> Op:
    return Op(p, "read", key, None, {"found": False}, invoke, complete)


def cas(
    p: int,
    key: str,
    expected: int,
    status: str,
    invoke: float,
    complete: float | None,
    output: Mapping[str, Any] | None = None,
) -> Op:
    """A cas; its output defaults to success (None with ``complete`` None: indeterminate)."""
    if output is None and complete is not None:
        output = {"ok": True, "version": expected + 1, "status": status}
    value = {"expected_version": expected, "status": status}
    return Op(p, "cas", key, value, output, invoke, complete)


def conflict(
    p: int, key: str, expected: int, status: str, current: int, invoke: float, complete: float
) -> Op:
    out = {"ok": False, "current_version": current}
    return cas(p, key, expected, status, invoke, complete, out)


def not_found(p: int, key: str, expected: int, invoke: float, complete: float) -> Op:
    return cas(p, key, expected, "paid", invoke, complete, {"ok": False, "not_found": True})


def grant(
    lock: str,
    owner: str,
    token: int,
    invoke: float,
    complete: float,
    ttl: float = 10.0,
    release: float | None = None,
) -> Grant:
    return Grant(lock, owner, token, ttl, invoke, complete, release)


# -- linearizability: known histories ----------------------------------------------------------


def test_a_sequential_history_passes() -> None:
    history = [
        read_absent(0, "o1", 0, 1),
        not_found(1, "o1", 1, 1.5, 1.8),
        create(0, "o1", 2, 3),
        read(1, "o1", 1, "created", 4, 5),
        cas(0, "o1", 1, "paid", 6, 7),
        conflict(1, "o1", 1, "cancelled", 2, 8, 9),
        cas(1, "o1", 2, "shipped", 10, 11),
        read(0, "o1", 3, "shipped", 12, 13),
    ]
    verdict = check_orders(history)
    assert verdict.ok, verdict.explanation
    assert verdict.explanation == "linearizability: ok"


def test_a_stale_read_after_a_completed_write_fails() -> None:
    history = [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, 3),
        read(1, "o1", 1, "created", 4, 5),
    ]
    verdict = check_orders(history)
    assert not verdict.ok
    (violation,) = verdict.violations
    assert "key 'o1': not linearizable" in violation
    assert "longest linearizable prefix (2 ops)" in violation
    assert "then p1 read -> v1 'created' [4.000, 5.000] must have taken effect" in violation
    assert "in state v2 'paid'" in violation


def test_the_same_read_passes_while_the_write_is_in_flight() -> None:
    history = [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, 6),
        read(1, "o1", 1, "created", 3, 4),
        read(1, "o1", 2, "paid", 5, 7),
    ]
    assert check_orders(history).ok


def test_a_lost_acknowledged_cas_fails() -> None:
    # The cas to v2 was acknowledged; a later cas still finds v1 (a new leader without it).
    history = [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, 3),
        conflict(1, "o1", 2, "shipped", 1, 4, 5),
    ]
    verdict = check_orders(history)
    assert not verdict.ok
    assert "conflict (current v1)" in verdict.violations[0]


def test_two_successful_cas_from_the_same_version_fail_even_when_concurrent() -> None:
    history = [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, 5),
        cas(1, "o1", 1, "cancelled", 3, 4),
    ]
    assert not check_orders(history).ok


def test_a_read_of_a_value_never_written_fails() -> None:
    history = [
        create(0, "o1", 0, 1),
        cas(1, "o1", 1, "paid", 2, 10),
        read(2, "o1", 2, "shipped", 3, 4),
    ]
    assert not check_orders(history).ok


def test_a_read_before_the_create_was_invoked_fails() -> None:
    history = [read(1, "o1", 1, "created", 0, 1), create(0, "o1", 2, 3)]
    assert not check_orders(history).ok


def test_a_concurrent_history_linearizable_in_one_non_obvious_order_passes() -> None:
    # The only order is R1, A, C, B, R2: A is invoked first and completes last, yet B (which
    # completes early) needs A's write, and C's conflict must fall between A and B.
    history = [
        create(9, "o1", 0, 1),
        read(0, "o1", 1, "created", 5, 95),  # R1
        cas(1, "o1", 1, "paid", 10, 100),  # A
        conflict(2, "o1", 1, "cancelled", 2, 15, 90),  # C
        cas(3, "o1", 2, "shipped", 20, 30),  # B
        read(4, "o1", 3, "shipped", 40, 50),  # R2
    ]
    verdict = check_orders(history)
    assert verdict.ok, verdict.explanation


def test_the_same_history_fails_when_the_first_read_comes_after_the_second_cas() -> None:
    history = [
        create(9, "o1", 0, 1),
        read(0, "o1", 1, "created", 35, 95),
        cas(1, "o1", 1, "paid", 10, 100),
        conflict(2, "o1", 1, "cancelled", 2, 15, 90),
        cas(3, "o1", 2, "shipped", 20, 30),
        read(4, "o1", 3, "shipped", 40, 50),
    ]
    assert not check_orders(history).ok


def test_an_indeterminate_write_that_was_seen_is_taken_as_applied() -> None:
    history = [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, None),  # timed out
        read(1, "o1", 2, "paid", 20, 21),
        cas(1, "o1", 2, "shipped", 22, 23),
    ]
    verdict = check_orders(history)
    assert verdict.ok, verdict.explanation


def test_an_indeterminate_write_never_seen_may_be_left_out() -> None:
    history = [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, None),
        read(1, "o1", 1, "created", 20, 21),
        read(1, "o1", 1, "created", 30, 31),
    ]
    assert check_orders(history).ok


def test_an_indeterminate_write_may_take_effect_long_after_its_invoke() -> None:
    history = [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, None),
        read(1, "o1", 1, "created", 20, 21),
        read(1, "o1", 2, "paid", 30, 31),
    ]
    assert check_orders(history).ok


def test_an_indeterminate_write_cannot_take_effect_before_its_invoke() -> None:
    history = [
        create(0, "o1", 0, 1),
        read(1, "o1", 2, "paid", 2, 3),
        cas(0, "o1", 1, "paid", 4, None),
    ]
    assert not check_orders(history).ok


def test_an_indeterminate_create_seen_by_a_read_passes() -> None:
    history = [create(0, "o1", 0, None), read(1, "o1", 1, "created", 5, 6)]
    assert check_orders(history).ok


def test_keys_are_checked_apart_and_only_the_bad_one_is_named() -> None:
    history = [
        create(0, "good", 0, 1),
        create(1, "bad", 0, 1),
        cas(0, "good", 1, "paid", 2, 3),
        cas(1, "bad", 1, "paid", 2, 3),
        read(0, "good", 2, "paid", 4, 5),
        read(1, "bad", 1, "created", 4, 5),
    ]
    verdict = check_orders(history)
    (violation,) = verdict.violations
    assert violation.startswith("key 'bad'")
    assert verdict.explanation.startswith("linearizability: 1 violation\n- key 'bad'")


def test_an_op_that_completes_before_its_invoke_is_refused() -> None:
    with pytest.raises(ValueError, match="completes before it is invoked"):
        check_orders([create(0, "o1", 2, 1)])


def test_an_unknown_op_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown op 'delete'"):
        check_orders([Op(0, "delete", "o1", None, {}, 0, 1)])


def test_the_search_budget_raises_instead_of_hanging() -> None:
    rng = random.Random(7)
    history = random_history(rng, n_ops=60, keys=("o1",), clients=5)
    with pytest.raises(SearchBudgetExceeded, match="key 'o1': no verdict after 10 search steps"):
        check_orders(history, max_steps=10)


def test_many_concurrent_reads_of_one_state_do_not_explode_the_search() -> None:
    # Without linearizing a legal read at once, the 30 reads would make 2^30 configurations.
    reads = [read(p, "o1", 1, "created", 2, 10) for p in range(30)]
    history = [
        create(99, "o1", 0, 1),
        *reads,
        cas(98, "o1", 1, "paid", 2, 10),
        read(97, "o1", 1, "created", 11, 12),
    ]
    verdict = check_orders(history, max_steps=10_000)
    assert not verdict.ok
    assert check_orders(history[:-1], max_steps=10_000).ok


def test_a_long_counterexample_lists_only_the_last_ops_of_its_prefix() -> None:
    history = [create(0, "o1", 0, 1)]
    history += [cas(0, "o1", v, f"s{v}", 2 * v, 2 * v + 1) for v in range(1, 30)]
    history.append(read(1, "o1", 1, "created", 100, 101))
    (violation,) = check_orders(history).violations
    assert "longest linearizable prefix (30 ops):" in violation
    assert "(18 earlier ops, to state v18 's17')" in violation
    assert "19. p0 cas(v18 -> 's18') -> v19 's18'" in violation
    assert "  1. " not in violation


def test_the_checker_is_generic_over_the_model() -> None:
    """A register of its own, to show the checker knows nothing of orders."""

    class Register:
        def init(self) -> int:
            return 0

        def step(self, state: int, op: Op) -> tuple[bool, int]:
            assert op.value is not None
            if op.f == "write":
                return True, int(op.value["v"])
            return op.value["v"] == state, state

        def partition_key(self, op: Op) -> str:
            return op.key

        def describe_op(self, op: Op) -> str:
            return f"{op.f} {op.value}"

        def describe_state(self, state: int) -> str:
            return str(state)

    def op(f: str, v: int, invoke: float, complete: float) -> Op:
        return Op(0, f, "r", {"v": v}, {}, invoke, complete)

    good = [op("write", 1, 0, 10), op("read", 1, 1, 2), op("read", 0, 3, 4)]
    assert not check_linearizable(good, Register()).ok  # 1 then 0: the write cannot un-happen
    good = [op("write", 1, 0, 10), op("read", 0, 1, 2), op("read", 1, 3, 4)]
    assert check_linearizable(good, Register()).ok


# -- linearizability: random histories ---------------------------------------------------------

STATUSES = ("paid", "shipped", "cancelled")


def apply(
    state: OrderState, f: str, value: Mapping[str, Any] | None
) -> tuple[dict[str, Any], OrderState]:
    """The orders, forward: the output of ``f`` in ``state`` and the state after it."""
    if f == "create":
        assert state is None
        return {"version": 1, "status": "created"}, (1, "created")
    if f == "read":
        if state is None:
            return {"found": False}, None
        return {"found": True, "version": state[0], "status": state[1]}, state
    assert value is not None
    if state is None:
        return {"ok": False, "not_found": True}, None
    if state[0] != value["expected_version"]:
        return {"ok": False, "current_version": state[0]}, state
    after = (state[0] + 1, str(value["status"]))
    return {"ok": True, "version": after[0], "status": after[1]}, after


def random_history(
    rng: random.Random,
    n_ops: int,
    keys: Sequence[str],
    clients: int,
    p_indeterminate: float = 0.1,
) -> list[Op]:
    """A linearizable history: each client runs ops back to back; each op takes effect at an
    instant inside its interval, and the outputs are the model's, in the order of those
    instants. An indeterminate op may have taken effect or not."""
    slots: list[tuple[float, int, float, float]] = []  # (instant, client, invoke, complete)
    for client in range(clients):
        t = rng.uniform(0, 1)
        for _ in range(n_ops // clients):
            duration = rng.uniform(0.1, 3.0)
            slots.append((t + rng.uniform(0, duration), client, t, t + duration))
            t += duration + rng.uniform(0, 0.5)
    slots.sort()
    state: dict[str, OrderState] = dict.fromkeys(keys)
    history = []
    for _, client, invoke, complete in slots:
        key = rng.choice(keys)
        current = state[key]
        value: dict[str, Any] | None = None
        if current is None:
            f = "create" if rng.random() < 0.6 else rng.choice(("read", "cas"))
        else:
            f = "read" if rng.random() < 0.4 else "cas"
        if f == "cas":
            version = 1 if current is None else current[0]
            if rng.random() < 0.3:
                version = max(1, version + rng.choice((-1, 1)))
            value = {"expected_version": version, "status": rng.choice(STATUSES)}
        output, after = apply(current, f, value)
        if rng.random() < p_indeterminate:
            if rng.random() < 0.5:
                state[key] = after  # it took effect; the client never heard
            history.append(Op(client, f, key, value, None, invoke, None))
        else:
            state[key] = after
            history.append(Op(client, f, key, value, output, invoke, complete))
    return history


def mutate(rng: random.Random, history: list[Op]) -> list[Op]:
    """The history with one answered op's output changed to another plausible answer."""
    answered = [i for i, op in enumerate(history) if op.output is not None]
    index = rng.choice(answered)
    op = history[index]
    assert op.output is not None
    out = dict(op.output)
    if op.f == "create":
        out = {"version": 1, "status": rng.choice(STATUSES)}
    elif op.f == "read" and out["found"]:
        if rng.random() < 0.5:
            out["version"] = max(1, out["version"] + rng.choice((-1, 1)))
        else:
            out = {"found": False}
    elif op.f == "read":
        out = {"found": True, "version": 1, "status": "created"}
    elif out["ok"]:
        out = {"ok": False, "current_version": out["version"]}
    elif "current_version" in out:
        out["current_version"] = max(1, out["current_version"] + rng.choice((-1, 1)))
    else:
        assert op.value is not None
        expected = op.value["expected_version"]
        out = {"ok": True, "version": expected + 1, "status": op.value["status"]}
    return [*history[:index], replace(op, output=out), *history[index + 1 :]]


def brute_force(history: Sequence[Op]) -> bool:
    """Linearizability by plain enumeration (one key, a few ops): every order that respects
    real time, with the indeterminate ops in or out. Slow and obviously right."""
    model = OrdersModel()
    n = len(history)

    def before(a: Op, b: Op) -> bool:
        return a.complete is not None and a.complete < b.invoke

    def search(done: frozenset[int], state: OrderState) -> bool:
        if all(i in done or history[i].complete is None for i in range(n)):
            return True
        for i in range(n):
            if i in done:
                continue
            if any(j not in done and before(history[j], history[i]) for j in range(n)):
                continue
            ok, after = model.step(state, history[i])
            if ok and search(done | {i}, after):
                return True
        return False

    return search(frozenset(), model.init())


@pytest.mark.parametrize("seed", range(20))
def test_random_linearizable_histories_pass(seed: int) -> None:
    rng = random.Random(seed)
    history = random_history(rng, n_ops=40, keys=("a", "b"), clients=4)
    verdict = check_orders(history)
    assert verdict.ok, verdict.explanation


def test_random_histories_with_one_output_changed_mostly_fail() -> None:
    rng = random.Random(2024)
    failed = 0
    trials = 60
    for _ in range(trials):
        history = random_history(rng, n_ops=30, keys=("a",), clients=3, p_indeterminate=0.05)
        failed += not check_orders(mutate(rng, history)).ok
    # Some changes stay legal (a read moved to a version its interval also saw); most do not.
    assert failed > trials // 2, f"only {failed} of {trials} mutated histories failed"


@pytest.mark.parametrize("seed", range(8))
def test_the_checker_agrees_with_brute_force_on_small_histories(seed: int) -> None:
    rng = random.Random(1000 + seed)
    verdicts = []
    for trial in range(25):
        history = random_history(rng, n_ops=7, keys=("a",), clients=3, p_indeterminate=0.2)
        if trial % 2:
            history = mutate(rng, history)
        expected = brute_force(history)
        assert check_orders(history).ok is expected, history
        verdicts.append(expected)
    assert any(verdicts)
    assert not all(verdicts)


def test_a_history_of_300_ops_on_3_keys_at_concurrency_5_checks_quickly() -> None:
    rng = random.Random(300)
    history = random_history(rng, n_ops=300, keys=("a", "b", "c"), clients=5)
    assert len(history) == 300
    assert check_orders(history).ok
    # A failing one explores every branch before it answers: it must be quick too.
    assert not check_orders(stale_read_at_the_end(history)).ok


def stale_read_at_the_end(history: list[Op]) -> list[Op]:
    """``history`` plus a read, after everything, of a version the last write replaced."""
    end = max(op.complete or op.invoke for op in history) + 1
    key, version = "a", 0
    for op in history:
        if op.key == key and op.f == "cas" and op.output and op.output.get("ok"):
            version = max(version, int(op.output["version"]))
    assert version >= 2
    return [*history, read(99, key, version - 1, "created", end, end + 1)]


# -- lost writes -------------------------------------------------------------------------------


def orders_run() -> list[Op]:
    return [
        create(0, "o1", 0, 1),
        cas(0, "o1", 1, "paid", 2, 3),
        create(1, "o2", 0, 1),
        create(2, "o3", 0, None),  # never acknowledged
        cas(1, "o2", 1, "paid", 2, None),
    ]


def test_lost_writes_passes_when_every_acknowledged_write_survived() -> None:
    final = {"o1": {"version": 2, "status": "paid"}, "o2": {"version": 1, "status": "created"}}
    verdict = lost_writes(orders_run(), final)
    assert verdict.ok, verdict.explanation


def test_lost_writes_passes_when_the_final_version_is_past_the_acknowledged_one() -> None:
    final = {"o1": {"version": 5, "status": "shipped"}, "o2": {"version": 2, "status": "paid"}}
    assert lost_writes(orders_run(), final).ok


def test_lost_writes_flags_an_acknowledged_create_that_is_gone() -> None:
    final = {"o1": {"version": 2, "status": "paid"}, "o2": None}
    verdict = lost_writes(orders_run(), final)
    assert verdict.violations == ("order 'o2': its create was acknowledged, but it is gone",)


def test_lost_writes_flags_an_order_not_read_back() -> None:
    verdict = lost_writes(orders_run(), {"o1": {"version": 2, "status": "paid"}})
    assert verdict.violations == (
        "order 'o2': its create was acknowledged, but it was not read back",
    )


def test_lost_writes_flags_an_acknowledged_cas_rolled_back() -> None:
    final = {"o1": {"version": 1, "status": "created"}, "o2": {"version": 1, "status": "created"}}
    verdict = lost_writes(orders_run(), final)
    assert verdict.violations == (
        "order 'o1': a cas to version 2 was acknowledged, but it is back at version 1 ('created')",
    )


def test_lost_writes_counts_an_acknowledged_cas_as_proof_of_its_create() -> None:
    history = [create(0, "o1", 0, None), cas(1, "o1", 1, "paid", 5, 6)]
    assert not lost_writes(history, {"o1": None}).ok


# -- fencing -----------------------------------------------------------------------------------


def test_fencing_passes_tokens_that_follow_real_time() -> None:
    grants = [
        grant("L", "a", 3, 0, 1, release=2),
        grant("L", "b", 7, 3, 4),
        grant("M", "a", 7, 0, 1),  # another lock: its tokens are its own
        grant("M", "b", 2, 0.5, 2),  # concurrent with the grant of 7: either order is fine
    ]
    assert fencing(grants).ok


def test_fencing_flags_a_token_given_to_two_owners() -> None:
    verdict = fencing([grant("L", "a", 3, 0, 1), grant("L", "b", 3, 5, 6)])
    assert "lock 'L': token 3 granted to 2 owners: 'a', 'b'" in verdict.violations


def test_fencing_takes_a_grant_answered_again_to_a_retry_as_one_grant() -> None:
    grants = [grant("L", "a", 3, 0, 1), grant("L", "a", 3, 2, 3), grant("L", "b", 9, 20, 21)]
    assert fencing(grants).ok


def test_fencing_flags_a_later_grant_with_a_smaller_token() -> None:
    verdict = fencing([grant("L", "a", 8, 0, 1), grant("L", "b", 5, 2, 3)])
    assert verdict.violations == (
        "lock 'L': token 5 ('b', asked at 2.000s) is not above token 8 ('a'), granted before "
        "it, by 1.000s",
    )


def test_fencing_compares_against_every_earlier_grant_not_only_the_last() -> None:
    grants = [grant("L", "a", 9, 0, 1), grant("L", "b", 4, 0.5, 5), grant("L", "c", 6, 6, 7)]
    verdict = fencing(grants)
    assert len(verdict.violations) == 1
    assert "token 6 ('c'" in verdict.violations[0] and "token 9 ('a')" in verdict.violations[0]


# -- leases ------------------------------------------------------------------------------------


def test_leases_pass_when_each_is_released_before_the_next() -> None:
    grants = [grant("L", "a", 1, 0, 1, release=2), grant("L", "b", 2, 3, 4, release=5)]
    assert leases(grants).ok


def test_leases_flag_two_held_at_once() -> None:
    grants = [grant("L", "a", 1, 0, 1, ttl=10), grant("L", "b", 2, 3, 4, ttl=10)]
    verdict = leases(grants)
    assert verdict.violations == (
        "lock 'L': token 2 ('b') held from 4.000s while token 1 ('a') was certainly held until "
        "10.000s",
    )


def test_a_lease_expires_ttl_after_its_invoke_at_the_latest_certainty() -> None:
    # a was granted somewhere in [0, 4]; it is certain only until 0 + 5.
    grants = [grant("L", "a", 1, 0, 4, ttl=5), grant("L", "b", 2, 4.5, 5)]
    assert leases(grants).ok


def test_leases_that_only_touch_pass() -> None:
    grants = [grant("L", "a", 1, 0, 1, release=3), grant("L", "b", 2, 2, 3)]
    assert leases(grants).ok


def test_the_margin_forgives_a_small_overlap() -> None:
    grants = [grant("L", "a", 1, 0, 1, ttl=5), grant("L", "b", 2, 4, 4.9)]
    assert not leases(grants).ok
    assert leases(grants, margin=0.2).ok


def test_leases_of_different_locks_may_overlap() -> None:
    assert leases([grant("L", "a", 1, 0, 1), grant("M", "b", 2, 0, 1)]).ok


def test_leases_compare_against_the_longest_held_not_only_the_last() -> None:
    grants = [
        grant("L", "a", 1, 0, 1, ttl=20),
        grant("L", "b", 2, 2, 3, release=4),
        grant("L", "c", 3, 5, 6, release=7),
    ]
    assert len(leases(grants).violations) == 2


# -- singleton ---------------------------------------------------------------------------------


def test_singleton_passes_one_start_per_token_and_a_growing_fence() -> None:
    starts = [TaskStart("n1", 3), TaskStart("n2", 9), TaskStart("n2", 9), TaskStart("n3", 14)]
    assert singleton(starts, [3, 3, 9, 14, 14]).ok


def test_singleton_flags_a_token_started_on_two_nodes() -> None:
    verdict = singleton([TaskStart("n1", 3), TaskStart("n2", 3)], [3])
    assert verdict.violations == ("fencing token 3 started on 2 nodes: n1, n2",)


def test_singleton_flags_an_accepted_token_older_than_the_one_before() -> None:
    verdict = singleton([TaskStart("n1", 3), TaskStart("n2", 9)], [3, 9, 3])
    assert verdict.violations == (
        "the fenced resource accepted token 3 (at position 2) after token 9",
    )
    assert verdict.explanation == (
        "singleton: 1 violation\n"
        "- the fenced resource accepted token 3 (at position 2) after token 9"
    )


def test_every_checker_answers_with_a_verdict() -> None:
    checks: list[Callable[[], Verdict]] = [
        lambda: check_orders([]),
        lambda: lost_writes([], {}),
        lambda: fencing([]),
        lambda: leases([]),
        lambda: singleton([], []),
    ]
    for check in checks:
        verdict = check()
        assert verdict.ok
        assert verdict.explanation == f"{verdict.checker}: ok"
