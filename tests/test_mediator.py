"""The mediator on its own: registration, the behavior pipeline, the JSON round trip of
commands, and LeaderOnlyBehavior's message (the guide's exact text)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import pytest
from helpers import free_ports

from catga_sync.config import ClusterConfig
from catga_sync.errors import CatgaError, NoLeaderError, NotLeaderError
from catga_sync.forwarding import LeaderOnlyBehavior
from catga_sync.idempotency import IdempotencyTable
from catga_sync.mediator import (
    Dispatch,
    InvalidCommandError,
    Mediator,
    Next,
    RegistrationError,
    UnknownCommandTypeError,
    current_dispatch,
)
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage


@dataclass
class CreateOrder:
    customer: str
    amount: float


@dataclass
class CancelOrder:
    order_id: str


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclass
class Line:
    sku: str
    quantity: int


@dataclass
class PlaceBasket:
    customer: str
    lines: list[Line]
    note: str | None = None
    priority: Priority = Priority.LOW
    tags: dict[str, int] = field(default_factory=dict)
    channel: Literal["web", "shop"] = "web"

    def __post_init__(self) -> None:
        if not self.lines:
            raise ValueError("a basket needs at least one line")


@dataclass
class OrderResult:
    id: str
    amount: float


def _mediator() -> Mediator:
    mediator = Mediator()
    mediator.register(CreateOrder, "create-order")
    mediator.handler(CreateOrder)(lambda cmd: {"customer": cmd.customer, "amount": cmd.amount})
    return mediator


# -- registration and sending ---------------------------------------------------------------------


def test_send_runs_the_handler_of_the_command_type_and_returns_its_result() -> None:
    mediator = _mediator()
    assert mediator.send(CreateOrder("ada", 12.5)) == {"customer": "ada", "amount": 12.5}


def test_the_class_decorator_registers_by_name() -> None:
    mediator = Mediator()

    @mediator.command("cancel-order")
    @dataclass
    class Cancel:
        order_id: str

    @mediator.handler(Cancel)
    def cancel(cmd: Cancel) -> str:
        return f"cancelled {cmd.order_id}"

    assert mediator.name_of(Cancel) == "cancel-order"
    assert mediator.type_of("cancel-order") is Cancel
    assert mediator.send(Cancel("7")) == "cancelled 7"


def test_an_unregistered_command_type_is_refused_by_name() -> None:
    @dataclass
    class Stray:
        x: int

    with pytest.raises(UnknownCommandTypeError, match="Stray is not a registered command") as info:
        _mediator().send(Stray(1))
    assert isinstance(info.value, CatgaError) and isinstance(info.value, LookupError)


def test_a_registered_command_without_a_handler_is_refused() -> None:
    mediator = Mediator()
    mediator.register(CancelOrder, "cancel-order")
    with pytest.raises(UnknownCommandTypeError, match=r"'cancel-order'.*has no handler"):
        mediator.send(CancelOrder("1"))


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UnknownCommandTypeError, match=r"no command named 'nope'.*create-order"):
        _mediator().type_of("nope")


def test_registration_mistakes_are_refused() -> None:
    mediator = _mediator()

    class NotADataclass:
        pass

    with pytest.raises(RegistrationError, match="not a dataclass"):
        mediator.register(NotADataclass)
    with pytest.raises(RegistrationError, match="already taken"):
        mediator.register(CancelOrder, "create-order")
    with pytest.raises(RegistrationError, match="already registered as 'create-order'"):
        mediator.register(CreateOrder, "other-name")
    with pytest.raises(RegistrationError, match="already has a handler"):
        mediator.handler(CreateOrder)(lambda cmd: None)
    mediator.register(CreateOrder, "create-order")  # the same registration again is harmless


def test_a_handlers_exception_propagates_unchanged() -> None:
    mediator = Mediator()
    boom = KeyError("order 9")

    @mediator.handler(CancelOrder)
    def cancel(cmd: CancelOrder) -> None:
        raise boom

    with pytest.raises(KeyError) as info:
        mediator.send(CancelOrder("9"))
    assert info.value is boom


# -- the pipeline ---------------------------------------------------------------------------------


def test_behaviors_wrap_the_handler_in_order_global_first_then_per_type() -> None:
    trail: list[str] = []

    def tracer(label: str) -> Any:
        def behavior(command: Any, next_: Next) -> Any:
            trail.append(f"{label} in")
            result = next_()
            trail.append(f"{label} out")
            return result

        return behavior

    mediator = Mediator(behaviors=[tracer("g1"), tracer("g2")])
    mediator.add_behavior(tracer("create-only"), for_=CreateOrder)
    mediator.add_behavior(tracer("g3"))

    @mediator.handler(CreateOrder)
    def create(cmd: CreateOrder) -> str:
        trail.append("handler")
        return "ok"

    @mediator.handler(CancelOrder)
    def cancel(cmd: CancelOrder) -> str:
        trail.append("handler")
        return "ok"

    assert mediator.send(CreateOrder("a", 1)) == "ok"
    assert trail == [
        "g1 in",
        "g2 in",
        "g3 in",
        "create-only in",
        "handler",
        "create-only out",
        "g3 out",
        "g2 out",
        "g1 out",
    ]
    trail.clear()
    mediator.send(CancelOrder("1"))
    assert trail == ["g1 in", "g2 in", "g3 in", "handler", "g3 out", "g2 out", "g1 out"]


def test_a_behavior_can_short_circuit_or_change_the_result() -> None:
    mediator = _mediator()
    mediator.add_behavior(
        lambda cmd, next_: "refused" if cmd.amount > 100 else {**next_(), "checked": True},
        for_=CreateOrder,
    )
    assert mediator.send(CreateOrder("a", 500)) == "refused"
    assert mediator.send(CreateOrder("a", 5)) == {"customer": "a", "amount": 5, "checked": True}


def test_a_behavior_may_call_next_again_to_retry() -> None:
    calls: list[int] = []
    mediator = Mediator()

    @mediator.handler(CancelOrder)
    def flaky(cmd: CancelOrder) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("flaky")
        return len(calls)

    def retry(command: Any, next_: Next) -> Any:
        for _ in range(5):
            try:
                return next_()
            except ConnectionError:
                continue
        raise AssertionError("unreachable")

    mediator.add_behavior(retry)
    assert mediator.send(CancelOrder("1")) == 3


def test_behaviors_see_the_dispatch_of_their_send() -> None:
    seen: list[Dispatch | None] = []
    mediator = _mediator()

    def spy(command: Any, next_: Next) -> Any:
        seen.append(current_dispatch())
        return next_()

    mediator.add_behavior(spy)
    mediator.send(CreateOrder("a", 1), idempotency_key="k-1", timeout=5)
    (dispatch,) = seen
    assert dispatch is not None
    assert dispatch.mediator is mediator
    assert dispatch.command_name == "create-order"
    assert dispatch.idempotency_key == "k-1"
    assert not dispatch.forwarded
    assert 0 < dispatch.remaining(99) <= 5
    assert current_dispatch() is None  # reset once send returns


# -- commands as JSON ----------------------------------------------------------------------------


def test_commands_round_trip_through_json_with_nested_types() -> None:
    mediator = Mediator()
    mediator.register(PlaceBasket, "place-basket")
    basket = PlaceBasket(
        "ada", [Line("sku-1", 2)], priority=Priority.HIGH, tags={"x": 1}, channel="shop"
    )
    name, payload = mediator.encode(basket)
    assert name == "place-basket"
    assert payload == {
        "customer": "ada",
        "lines": [{"sku": "sku-1", "quantity": 2}],
        "note": None,
        "priority": "high",
        "tags": {"x": 1},
        "channel": "shop",
    }
    assert mediator.decode(name, payload) == basket


def test_an_integer_is_a_valid_float_field() -> None:
    command = _mediator().decode("create-order", {"customer": "a", "amount": 3})
    assert command == CreateOrder("a", 3.0)
    assert isinstance(command.amount, float)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"customer": "a"}, r"missing field\(s\) \['amount'\]"),
        ({"customer": "a", "amount": 1, "x": 2}, r"unknown field\(s\) \['x'\]"),
        ({"customer": 7, "amount": 1}, "payload.customer must be a string, not a number"),
        ({"customer": "a", "amount": "1"}, "payload.amount must be a number, not a string"),
        ({"customer": "a", "amount": True}, "payload.amount must be a number, not a boolean"),
        ([1, 2], "must be an object"),
    ],
)
def test_mistyped_payloads_are_refused_field_by_field(payload: Any, message: str) -> None:
    with pytest.raises(InvalidCommandError, match=message):
        _mediator().decode("create-order", payload)


def test_nested_mistakes_and_the_dataclasses_own_validation_are_refused() -> None:
    mediator = Mediator()
    mediator.register(PlaceBasket, "place-basket")
    with pytest.raises(InvalidCommandError, match=r"payload.lines\[0\].quantity must be an int"):
        mediator.decode("place-basket", {"customer": "a", "lines": [{"sku": "s", "quantity": 1.5}]})
    with pytest.raises(InvalidCommandError, match="must be one of \\['low', 'high'\\]"):
        mediator.decode(
            "place-basket",
            {"customer": "a", "lines": [{"sku": "s", "quantity": 1}], "priority": "urgent"},
        )
    with pytest.raises(InvalidCommandError, match="at least one line"):
        mediator.decode("place-basket", {"customer": "a", "lines": []})


def test_non_json_commands_and_results_are_refused() -> None:
    mediator = _mediator()
    with pytest.raises(InvalidCommandError, match="is not JSON"):
        mediator.encode(CreateOrder("a", float("nan")))
    with pytest.raises(InvalidCommandError, match="is not JSON"):
        mediator.encode_result("create-order", object())


def test_results_are_rebuilt_into_the_declared_result_type() -> None:
    mediator = Mediator()
    mediator.register(CreateOrder, "create-order", result=OrderResult)
    wire = mediator.encode_result("create-order", OrderResult("1", 2.5))
    assert wire == {"id": "1", "amount": 2.5}
    assert mediator.decode_result("create-order", wire) == OrderResult("1", 2.5)
    assert Mediator().decode_result("anything", {"a": 1}) == {"a": 1}


# -- LeaderOnlyBehavior (with a known leader on a follower: tests/test_forwarding.py) ------------


def _single_node(port: int) -> ClusterNode:
    endpoint = f"http://127.0.0.1:{port}"
    config = ClusterConfig(
        local_node_endpoint=endpoint,
        members=(endpoint,),
        node_id="solo",
        election_timeout=timedelta(milliseconds=150),
        heartbeat_interval=timedelta(milliseconds=50),
    )
    return ClusterNode(config, storage=MemoryStorage("solo"))


def test_leader_only_runs_the_handler_on_the_leader() -> None:
    (port,) = free_ports(1)
    with _single_node(port) as node:
        node.coordinator.wait_for_leader(10)
        node.wait_for(lambda s: s.is_leader, 10)
        mediator = _mediator()
        mediator.add_behavior(LeaderOnlyBehavior(node.coordinator), for_=CreateOrder)
        assert mediator.send(CreateOrder("a", 1)) == {"customer": "a", "amount": 1}


def test_leader_only_without_a_known_leader_says_none() -> None:
    (port,) = free_ports(1)
    node = _single_node(port)  # not started: it knows no leader
    mediator = _mediator()
    mediator.add_behavior(LeaderOnlyBehavior(node.coordinator), for_=CreateOrder)
    with pytest.raises(NotLeaderError) as info:
        mediator.send(CreateOrder("a", 1))
    assert str(info.value) == "This node is not the leader. Leader: none"
    assert isinstance(info.value, NoLeaderError)


def test_the_bare_class_decorator_registers_under_the_class_name() -> None:
    mediator = Mediator()

    @mediator.command
    @dataclass
    class Ping:
        n: int

    assert mediator.name_of(Ping(1)) == "Ping"


# -- the idempotency table (the replicated record of forwarded outcomes) -------------------------


def test_the_idempotency_table_keeps_the_first_outcome_and_expires_by_entry_time() -> None:
    table = IdempotencyTable(ttl=10)
    for now, key in [(0.0, "old"), (5.0, "z"), (12.0, "a")]:
        table.now = now
        table.record(key, {"result": key}, "fp")
    assert table.get("old") is None  # recorded at 0, forgotten by the entry at 12
    assert table.record("z", {"result": "second"})["outcome"] == {"result": "z"}
    # Snapshots are written with sorted keys; a restored table still expires oldest first.
    restored = IdempotencyTable(ttl=10)
    restored.restore(json.loads(json.dumps(table.snapshot(), sort_keys=True)))
    restored.now = 16.0
    restored.record("b", {"result": "b"})
    assert restored.get("z") is None
    assert restored.get("a") == {"outcome": {"result": "a"}, "fingerprint": "fp", "t": 12.0}
