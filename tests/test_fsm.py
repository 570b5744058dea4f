"""The replicated state, pure: exactly-once sessions, errors, snapshots — alone and driven by
the simulator through leader crashes with retried proposals."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from catga_sync.errors import (
    AlreadyRegisteredError,
    CatgaError,
    InvalidMessageError,
    UsageError,
)
from catga_sync.fsm import (
    CommandError,
    Outcome,
    ReplicatedState,
    RequestExpiredError,
    StateMachine,
    UnknownCommandError,
    command,
    encode_command,
    query,
    rebuild_error,
)
from catga_sync.kv import ReplicatedDict
from catga_sync.testing import SimulatedCluster


class Counter(StateMachine):
    name = "counter"

    def __init__(self) -> None:
        self.value = 0

    @command
    def add(self, n: int) -> int:
        if n < 0:
            raise ValueError("only up")
        self.value += n
        return self.value

    @query
    def read(self) -> int:
        return self.value


def state() -> ReplicatedState:
    s = ReplicatedState(session_ttl=100.0)
    s.register(Counter())
    return s


def add(
    n: int,
    client: str | None = "c1",
    seq: int | None = 1,
    ack: int | None = None,
    time: float = 0.0,
) -> bytes:
    return encode_command("counter", "add", [n], {}, client=client, seq=seq, ack=ack, time=time)


def test_a_command_applies_and_returns_its_result() -> None:
    s = state()
    assert s.apply(1, add(5)).unwrap() == 5
    assert s.machines["counter"].value == 5  # type: ignore[attr-defined]


def test_a_repeated_client_and_seq_returns_the_first_outcome_without_applying() -> None:
    s = state()
    first = s.apply(1, add(5, seq=1))
    again = s.apply(2, add(5, seq=1))
    assert again.unwrap() == first.unwrap() == 5
    assert s.machines["counter"].value == 5  # type: ignore[attr-defined]


def test_an_error_is_remembered_as_the_outcome_too() -> None:
    s = state()
    with pytest.raises(ValueError, match="only up"):
        s.apply(1, add(-1, seq=7)).unwrap()
    again = s.apply(2, add(-1, seq=7))
    with pytest.raises(ValueError, match="only up"):
        again.unwrap()  # rebuilt from its type name: the same type, the same message


def test_acknowledged_outcomes_are_forgotten_and_a_late_retry_is_refused_not_reapplied() -> None:
    s = state()
    s.apply(1, add(1, seq=1, ack=1))
    s.apply(2, add(1, seq=2, ack=2))  # the client says: seq 1 is answered
    assert 1 not in s.sessions["c1"].outcomes
    with pytest.raises(RequestExpiredError):
        s.apply(3, add(1, seq=1, ack=1)).unwrap()
    assert s.machines["counter"].value == 2  # type: ignore[attr-defined]


def test_idle_sessions_expire_by_entry_time() -> None:
    s = state()
    s.apply(1, add(1, client="old", time=10.0))
    s.apply(2, add(1, client="new", time=200.0))
    assert "old" not in s.sessions
    assert "new" in s.sessions


def test_entry_time_never_goes_backwards() -> None:
    s = state()
    s.apply(1, add(1, client=None, seq=None, time=50.0))
    s.apply(2, add(1, client=None, seq=None, time=40.0))
    assert s.time == 50.0


def test_unknown_machines_methods_and_queries_are_refused_as_commands() -> None:
    s = state()
    for data in (
        encode_command("nope", "add", [1], {}, client=None, seq=None, ack=None, time=0),
        encode_command("counter", "nope", [1], {}, client=None, seq=None, ack=None, time=0),
        encode_command("counter", "read", [], {}, client=None, seq=None, ack=None, time=0),
        b"not json",
        b'{"m": "counter"}',
    ):
        with pytest.raises(UnknownCommandError):
            s.apply(1, data).unwrap()
    assert s.machines["counter"].value == 0  # type: ignore[attr-defined]


def test_non_json_arguments_are_refused_when_encoding() -> None:
    with pytest.raises(TypeError, match="must be JSON"):
        encode_command("counter", "add", [object()], {}, client=None, seq=None, ack=None, time=0)
    with pytest.raises(TypeError, match="must be JSON"):
        encode_command(
            "counter", "add", [float("inf")], {}, client=None, seq=None, ack=None, time=0
        )


def test_a_snapshot_restores_machines_and_sessions() -> None:
    s = state()
    s.register(ReplicatedDict())
    s.apply(1, add(3, seq=1))
    kv = encode_command("catga.kv", "set", ["a", [1, 2]], {}, client="c2", seq=1, ack=1, time=5)
    s.apply(2, kv)
    copy = state()
    copy.register(ReplicatedDict())
    copy.restore(s.snapshot())
    assert copy.snapshot() == s.snapshot()
    assert copy.machines["counter"].value == 3  # type: ignore[attr-defined]
    assert copy.machines["catga.kv"].data == {"a": [1, 2]}  # type: ignore[attr-defined]
    assert copy.apply(3, add(3, seq=1)).unwrap() == 3  # still deduplicated after restore
    assert copy.machines["counter"].value == 3  # type: ignore[attr-defined]


def test_a_restored_node_iterates_its_dicts_in_the_order_the_log_built_them() -> None:
    """Keys "9" then "10", "b" then "a": a node restored from a snapshot must list them in
    that order, as the nodes that applied the log do (a sorted snapshot gave "10" before "9",
    and a command taking "the first pending item" would pick another one there)."""
    s = state()
    s.register(ReplicatedDict())
    for index, key in enumerate(["9", "10", "b", "a"], start=1):
        s.apply(
            index,
            encode_command(
                "catga.kv", "set", [key, index], {}, client=None, seq=None, ack=None, time=0
            ),
        )
    copy = state()
    copy.register(ReplicatedDict())
    copy.restore(s.snapshot())
    assert list(copy.machines["catga.kv"].data) == ["9", "10", "b", "a"]  # type: ignore[attr-defined]
    assert copy.snapshot() == s.snapshot()


def test_duplicate_names_are_refused() -> None:
    s = state()
    with pytest.raises(CatgaError, match="already registered"):
        s.register(Counter())


def test_a_duplicate_name_is_an_already_registered_error() -> None:
    with pytest.raises(AlreadyRegisteredError, match="give each a unique `name`") as caught:
        state().register(Counter())
    assert isinstance(caught.value, CatgaError)
    assert isinstance(caught.value, ValueError)


class Numbered(Counter):
    name = 7  # type: ignore[assignment]  # not a string: the mistake under test


def test_a_state_machine_without_a_usable_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="Numbered needs a non-empty `name`") as caught:
        ReplicatedState().register(Numbered())
    assert isinstance(caught.value, CatgaError)


def test_an_unknown_snapshot_format_is_an_invalid_message_error() -> None:
    with pytest.raises(InvalidMessageError, match="unknown snapshot format 99") as caught:
        state().restore(b'{"format": 99}')
    assert isinstance(caught.value, CatgaError)


def test_errors_are_rebuilt_only_from_known_exception_types() -> None:
    assert isinstance(rebuild_error("KeyError", "k"), KeyError)
    assert isinstance(rebuild_error(f"{__name__}:Counter", "x"), CommandError)  # not an error
    assert isinstance(rebuild_error("no.such.module:Boom", "x"), CommandError)
    error = rebuild_error("catga_sync.errors:NotLeaderError", "m")
    assert isinstance(error, CatgaError)


def test_outcome_json_round_trip() -> None:
    assert Outcome.from_json(Outcome(result={"a": 1}).to_json()).unwrap() == {"a": 1}


# -- exactly once through leader crashes, in the simulator -----------------------------------


class SimMachine:
    """Adapts ReplicatedState to the simulator's state machine protocol."""

    def __init__(self) -> None:
        self.state = state()
        self.outcomes: dict[int, Outcome] = {}

    def apply(self, index: int, data: bytes) -> Any:
        self.outcomes[index] = self.state.apply(index, data)
        return self.outcomes[index]

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, data: bytes) -> None:
        self.state.restore(data)


@pytest.mark.parametrize("seed", range(8))
def test_retried_proposals_through_leader_crashes_apply_exactly_once(seed: int) -> None:
    cluster = SimulatedCluster(3, seed=seed, state_machine=SimMachine)
    cluster.set_faults(drop=0.05, duplicate=0.05, delay=(0, 2))
    expected = 0
    for seq in range(1, 13):
        data = add(seq, seq=seq, ack=seq)
        expected += seq
        # A client that does not hear back retries the same bytes, possibly on a new leader.
        for attempt in range(3):
            leader = cluster.wait_for_leader()
            with contextlib.suppress(CatgaError):
                cluster.propose(data, leader)
            cluster.run(3)
            if attempt == 0 and seq % 4 == 0:
                cluster.crash(leader)
                cluster.wait_for_leader()
                cluster.restart(leader)
        cluster.commit(data)
    cluster.set_faults()
    cluster.run(100)
    for node_id in cluster.nodes:
        machine = cluster.machine(node_id)
        assert machine.state.machines["counter"].value == expected  # type: ignore[attr-defined]
