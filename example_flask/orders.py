"""The OrderSystem's state: an ``Orders`` state machine replicated through the Raft log.

Every node applies the same commands in the same order, so every node holds the same orders and
any node can answer. The version check of an update is a compare-and-set *inside* the command:
two updates racing on two nodes are decided by their order in the log, never by which node
happened to read first.

Errors raised here reach the caller on every node path as the same type with the same message
(only type and message cross the hop), so :class:`VersionConflict` keeps the current version in
a fixed message format and reads it back from there.
"""

from __future__ import annotations

import math
import re
from typing import Any

from catga_sync.errors import CatgaError
from catga_sync.fsm import StateMachine, command, query

MAX_CUSTOMER_CHARS = 200
MAX_STATUS_CHARS = 50
SHIPPABLE = ("created", "paid")


class OrderNotFound(CatgaError, LookupError):
    """No order has this id."""

    @classmethod
    def for_id(cls, order_id: str) -> OrderNotFound:
        return cls(f"Order {order_id!r} does not exist: list the orders with GET /orders.")


class VersionConflict(CatgaError, ValueError):
    """An update named an ``expected_version`` that is no longer the order's version.

    Built from its message alone (that is all that crosses the hop), which always ends with
    ``(current version: N)``; :attr:`current_version` reads N back.
    """

    _CURRENT = re.compile(r"\(current version: (\d+)\)$")

    def __init__(self, message: str) -> None:
        super().__init__(message)
        found = self._CURRENT.search(message)
        self.current_version: int | None = int(found.group(1)) if found else None

    @classmethod
    def for_versions(cls, order_id: str, expected: int, current: int) -> VersionConflict:
        return cls(
            f"Order {order_id!r} changed since version {expected}: read it again and retry "
            f"with expected_version {current} (current version: {current})"
        )


class CannotShip(CatgaError, ValueError):
    """The order's status does not allow shipping it (cancelled, say)."""


class StaleFencingToken(CatgaError, ValueError):
    """The outbox was written under a newer fencing token (a newer leader's term) than this
    write carries: it comes from a leader that has since been replaced, and is refused."""


class InvalidOrder(CatgaError, ValueError):
    """A command's arguments break an order's rules; nothing was changed."""


def check_customer(customer: object) -> str:
    if not isinstance(customer, str) or not customer.strip():
        raise InvalidOrder("customer must be a non-empty string")
    if len(customer) > MAX_CUSTOMER_CHARS:
        raise InvalidOrder(f"customer must be at most {MAX_CUSTOMER_CHARS} characters")
    return customer


def check_amount(amount: object) -> int | float:
    # bool is an int in Python, and true is not an amount.
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise InvalidOrder("amount must be a number")
    try:
        finite = math.isfinite(amount)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite or amount <= 0:
        raise InvalidOrder("amount must be a finite number greater than 0")
    return amount


def check_status(status: object) -> str:
    if not isinstance(status, str) or not status.strip():
        raise InvalidOrder("status must be a non-empty string")
    if len(status) > MAX_STATUS_CHARS:
        raise InvalidOrder(f"status must be at most {MAX_STATUS_CHARS} characters")
    return status


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidOrder("expected_version must be an integer of at least 1")
    return version


class Orders(StateMachine):
    """The orders, by id. Deterministic: ids come from a counter in the state, never a clock
    or a random source, so every node gives the same order the same id."""

    name = "orders"

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.next_id = 1
        self.processed: dict[str, int] = {}
        """The outbox: order id -> the fencing token the OutboxProcessor processed it under."""
        self.outbox_fence = 0
        """The highest fencing token the outbox has accepted: an older one is refused."""
        self.last_report: dict[str, Any] | None = None
        """What the leader-gated report job wrote last."""

    @command
    def create(self, customer: str, amount: int | float) -> dict[str, Any]:
        """A new order with status ``created`` at version 1."""
        order_id = str(self.next_id)
        order: dict[str, Any] = {
            "id": order_id,
            "customer": check_customer(customer),
            "amount": check_amount(amount),
            "status": "created",
            "version": 1,
        }
        self.orders[order_id] = order
        self.next_id += 1
        return dict(order)  # a copy: the caller must not hold the live state

    @command
    def update(self, order_id: str, status: str, expected_version: int) -> dict[str, Any]:
        """Set the status if the order is still at ``expected_version``; bumps the version."""
        check_status(status)
        check_version(expected_version)
        order = self.orders.get(order_id)
        if order is None:
            raise OrderNotFound.for_id(order_id)
        if order["version"] != expected_version:
            raise VersionConflict.for_versions(order_id, expected_version, order["version"])
        order["status"] = status
        order["version"] += 1
        return dict(order)

    @command
    def ship(self, order_id: str) -> dict[str, Any]:
        """Mark a created or paid order shipped (version + 1). Shipping a shipped order changes
        nothing and returns it: a retried ship is harmless, whoever runs it again."""
        order = self.orders.get(order_id)
        if order is None:
            raise OrderNotFound.for_id(order_id)
        if order["status"] == "shipped":
            return dict(order)
        if order["status"] not in SHIPPABLE:
            raise CannotShip(
                f"Order {order_id!r} is {order['status']!r}; only {' or '.join(SHIPPABLE)} "
                "orders ship."
            )
        order["status"] = "shipped"
        order["version"] += 1
        return dict(order)

    @command
    def mark_processed(self, order_id: str, fencing_token: int) -> dict[str, Any]:
        """Record that the OutboxProcessor handled ``order_id`` under ``fencing_token`` (the
        term it ran in). Fenced: a token older than one already seen is refused with
        :class:`StaleFencingToken`, so a deposed leader that wakes up late writes nothing.
        The order itself (status, version) is not touched: those belong to the clients'
        compare-and-set updates, which a background writer must not make fail."""
        if isinstance(fencing_token, bool) or not isinstance(fencing_token, int):
            raise InvalidOrder("fencing_token must be an integer")
        if fencing_token < self.outbox_fence:
            raise StaleFencingToken(
                f"fencing token {fencing_token} is older than {self.outbox_fence}, which the "
                "outbox has already accepted: this write comes from a replaced leader"
            )
        if order_id not in self.orders:
            raise OrderNotFound.for_id(order_id)
        self.outbox_fence = fencing_token
        token = self.processed.setdefault(order_id, fencing_token)
        return {"order_id": order_id, "fencing_token": token}

    @command
    def record_report(
        self, counts: dict[str, int], fire_time: str, fencing_token: int
    ) -> dict[str, Any]:
        """Keep the report job's latest report (counts of orders by status)."""
        report = {"counts": counts, "fire_time": fire_time, "fencing_token": fencing_token}
        self.last_report = report
        return report

    @query
    def report(self) -> dict[str, Any] | None:
        return self.last_report

    @query
    def outbox(self) -> dict[str, Any]:
        """The outbox: orders processed (with their tokens), orders still pending, the fence."""
        pending = [
            order_id
            for order_id, order in self.orders.items()
            if order["status"] == "created" and order_id not in self.processed
        ]
        processed = [
            {"order_id": order_id, "fencing_token": token}
            for order_id, token in self.processed.items()
        ]
        return {"fence": self.outbox_fence, "processed": processed, "pending": pending}

    @query
    def get(self, order_id: str) -> dict[str, Any] | None:
        order = self.orders.get(order_id)
        return dict(order) if order is not None else None

    @query
    def all_orders(self) -> list[dict[str, Any]]:
        return [dict(order) for order in self.orders.values()]
