"""The lock table, pure: grants and fencing tokens, the FIFO queue, renewals and expiry, bad
inputs refused with typed errors and no change, snapshots; the lease monitor's clock with an
injected clock; the fencing helpers against real SQLite (and PostgreSQL when configured)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from catga_sync import locks
from catga_sync.errors import (
    CatgaError,
    InvalidLockRequestError,
    LockNotAcquiredError,
    LockNotHeldError,
    NotRegisteredError,
    StaleTokenError,
)
from catga_sync.fencing import FencedResource
from catga_sync.fsm import ReplicatedState, encode_command
from catga_sync.locks import Expiry, LeaseMonitor, LockTable
from catga_sync.node import NodeStatus
from catga_sync.raft import Role
from catga_sync.runtime import LeadershipChange


class Events:
    """A LockListener that writes down what the table reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def granted(self, name: str, lock: dict[str, Any]) -> None:
        self.seen.append(("granted", name, lock["holder"], str(lock["token"])))

    def renewed(self, name: str, lock: dict[str, Any]) -> None:
        self.seen.append(("renewed", name, lock["holder"], str(lock["since"])))

    def freed(self, name: str, lock: dict[str, Any], reason: str) -> None:
        self.seen.append(("freed", name, lock["holder"], reason))

    def queued(self, name: str, waiter: dict[str, Any]) -> None:
        self.seen.append(("queued", name, waiter["holder"]))

    def dequeued(self, name: str, waiter: dict[str, Any], reason: str) -> None:
        self.seen.append(("dequeued", name, waiter["holder"], reason))

    def restored(self, locks: dict[str, dict[str, Any]]) -> None:
        self.seen.append(("restored", *sorted(locks)))


class Replica:
    """A ReplicatedState with a LockTable, fed entries with increasing indexes."""

    def __init__(self, listener: Any = None) -> None:
        self.state = ReplicatedState()
        self.table = LockTable(listener)
        self.state.register(self.table)
        self.index = 0

    def raw(self, body: dict[str, Any]) -> Any:
        """Apply a hand-made entry (it may hold what encode_command refuses, like NaN)."""
        self.index += 1
        return self.state.apply(self.index, json.dumps(body).encode()).unwrap()

    def __getattr__(self, op: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.index += 1
            data = encode_command(
                "catga.locks", op, args, kwargs, client=None, seq=None, ack=None, time=1.0
            )
            return self.state.apply(self.index, data).unwrap()

        return call

    def dump(self) -> bytes:
        return self.state.snapshot()


# -- grants and tokens ----------------------------------------------------------------------


def test_a_free_lock_is_granted_with_the_grant_entry_index_as_token() -> None:
    t = Replica()
    t.index = 41
    grant = t.acquire("orders", "h1", "worker-1", 10)
    assert grant == {"state": "granted", "token": 42, "owner": "worker-1", "ttl": 10.0}
    assert t.table.describe("orders") == {
        "token": 42,
        "owner": "worker-1",
        "ttl": 10.0,
        "granted_at": 1.0,
        "waiters": [],
    }


def test_a_held_lock_is_busy_for_a_try_and_queues_a_waiter_in_order() -> None:
    t = Replica()
    t.acquire("x", "h1", "a", 10)
    assert t.acquire("x", "h2", "b", 10, 0) == {"state": "busy", "token": 1, "owner": "a"}
    assert t.acquire("x", "h2", "b", 10, 5) == {"state": "queued", "position": 1}
    assert t.acquire("x", "h3", "c", 10, 5) == {"state": "queued", "position": 2}
    assert t.acquire("x", "h2", "b", 10, 5) == {"state": "queued", "position": 1}  # the same
    assert t.acquire("x", "h1", "a", 10) == {
        "state": "granted",
        "token": 1,
        "owner": "a",
        "ttl": 10.0,
    }
    assert t.table.describe("x")["waiters"] == ["b", "c"]  # type: ignore[index]


def test_release_hands_the_lock_to_the_first_waiter_in_the_same_entry() -> None:
    events = Events()
    t = Replica(events)
    t.acquire("x", "h1", "a", 10)
    t.acquire("x", "h2", "b", 10, 5)
    t.acquire("x", "h3", "c", 10, 5)
    assert t.release("x", 1) == {"released": 1, "next": 4}  # entry 4 granted it to b
    assert t.table.describe("x")["owner"] == "b"  # type: ignore[index]
    assert t.release("x", 4) == {"released": 4, "next": 5}
    assert t.release("x", 5) == {"released": 5, "next": None}
    assert t.table.describe("x") is None
    assert t.table.locks == {}
    granted = [e for e in events.seen if e[0] == "granted"]
    assert [(e[2], int(e[3])) for e in granted] == [("h1", 1), ("h2", 4), ("h3", 5)]


def test_tokens_strictly_increase_across_grants_of_every_kind() -> None:
    t = Replica()
    tokens = [t.acquire("x", "h0", "o", 10)["token"]]
    for k in range(1, 6):
        t.acquire("x", f"h{k}", "o", 10, 5)
    t.acquire("other", "z", "o", 10)
    for k in range(6):
        held = t.table.locks["x"]
        if k % 3 == 0:
            t.release("x", held["token"])
        elif k % 3 == 1:
            t.expire("x", held["token"], held["since"])
        else:
            t.cancel("x", held["holder"])
        if "x" in t.table.locks:
            tokens.append(t.table.locks["x"]["token"])
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 6


# -- renewals and expiry --------------------------------------------------------------------


def test_renew_moves_since_and_a_stale_expire_is_ignored() -> None:
    t = Replica()
    token = t.acquire("x", "h1", "a", 10)["token"]
    assert t.renew("x", token) == {"token": token, "ttl": 10.0}
    since = t.table.locks["x"]["since"]
    assert since == 2
    assert t.expire("x", token, token) is False  # decided before the renewal: ignored
    assert t.expire("x", token + 100, since) is False  # another grant's token
    assert t.table.describe("x") is not None
    assert t.expire("x", token, since) is True
    assert t.table.describe("x") is None


def test_expire_grants_the_next_waiter() -> None:
    t = Replica()
    t.acquire("x", "h1", "a", 10)
    t.acquire("x", "h2", "b", 10, 5)
    assert t.expire("x", 1, 1) is True
    assert t.table.locks["x"]["holder"] == "h2"
    assert t.table.locks["x"]["token"] == 3


def test_cancel_withdraws_a_waiter_or_gives_back_a_late_grant() -> None:
    events = Events()
    t = Replica(events)
    t.acquire("x", "h1", "a", 10)
    t.acquire("x", "h2", "b", 10, 5)
    assert t.cancel("x", "h2") == "withdrawn"
    assert ("dequeued", "x", "h2", "withdrawn") in events.seen
    assert t.cancel("x", "h2") == "none"
    assert t.cancel("x", "h1", True) == "holding"  # the monitor only drops waiters
    assert t.cancel("x", "h1") == "released"
    assert t.table.locks == {}
    assert t.cancel("nothing", "h1") == "none"


def test_a_full_queue_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks.table, "MAX_WAITERS", 2)  # read where LockTable lives
    t = Replica()
    t.acquire("x", "h1", "a", 10)
    t.acquire("x", "h2", "b", 10, 5)
    t.acquire("x", "h3", "c", 10, 5)
    busy = t.acquire("x", "h4", "d", 10, 5)
    assert busy["state"] == "busy"
    assert "2 waiters" in busy["reason"]


# -- bad inputs -----------------------------------------------------------------------------

BAD_ACQUIRES = [
    pytest.param(("", "h", "o", 10, 0), id="empty name"),
    pytest.param(("x" * 257, "h", "o", 10, 0), id="huge name"),
    pytest.param(("a\x00b", "h", "o", 10, 0), id="NUL in name"),
    pytest.param(("a\nb", "h", "o", 10, 0), id="newline in name"),
    pytest.param((7, "h", "o", 10, 0), id="name not a string"),
    pytest.param(("x", "", "o", 10, 0), id="empty holder"),
    pytest.param(("x", "h", "", 10, 0), id="empty owner"),
    pytest.param(("x", "h", "o" * 300, 10, 0), id="huge owner"),
    pytest.param(("x", "h", "o", 0, 0), id="ttl zero"),
    pytest.param(("x", "h", "o", -1, 0), id="ttl negative"),
    pytest.param(("x", "h", "o", 1e12, 0), id="ttl absurd"),
    pytest.param(("x", "h", "o", 0.001, 0), id="ttl too small"),
    pytest.param(("x", "h", "o", True, 0), id="ttl bool"),
    pytest.param(("x", "h", "o", "10", 0), id="ttl string"),
    pytest.param(("x", "h", "o", 10, -1), id="wait negative"),
    pytest.param(("x", "h", "o", 10, 1e9), id="wait absurd"),
]


@pytest.mark.parametrize("args", BAD_ACQUIRES)
def test_bad_acquires_are_refused_typed_and_change_nothing(args: tuple[Any, ...]) -> None:
    t = Replica()
    t.acquire("x", "h1", "a", 10)
    t.acquire("x", "h2", "b", 10, 5)
    before = json.loads(t.dump())["machines"]["catga.locks"]
    with pytest.raises(InvalidLockRequestError):
        t.acquire(*args)
    assert json.loads(t.dump())["machines"]["catga.locks"] == before


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_ttls_in_an_entry_are_refused_in_apply(value: float) -> None:
    # encode_command refuses NaN already; a hand-made entry reaches apply and is refused there.
    t = Replica()
    before = t.dump()
    body = {"m": "catga.locks", "op": "acquire", "a": ["x", "h", "o", value, 0], "k": {}, "t": 1}
    with pytest.raises(InvalidLockRequestError, match="TTL"):
        t.raw(body)
    assert json.loads(t.dump())["machines"] == json.loads(before)["machines"]


BAD_TOKENS = [0, -3, True, "1", 1.5, None]


@pytest.mark.parametrize("token", BAD_TOKENS, ids=repr)
def test_bad_tokens_are_refused_typed_and_change_nothing(token: Any) -> None:
    t = Replica()
    t.acquire("x", "h1", "a", 10)
    before = json.loads(t.dump())["machines"]["catga.locks"]
    for op in ("renew", "release"):
        with pytest.raises(InvalidLockRequestError, match="fencing token"):
            getattr(t, op)("x", token)
    assert json.loads(t.dump())["machines"]["catga.locks"] == before


def test_release_with_a_wrong_token_and_a_double_release_say_the_lock_is_not_held() -> None:
    t = Replica()
    t.acquire("x", "h1", "a", 10)
    t.acquire("x", "h2", "b", 10, 5)
    before = json.loads(t.dump())["machines"]["catga.locks"]
    with pytest.raises(
        LockNotHeldError, match=r"not held with token 99 \(it is held with token 1\)"
    ):
        t.release("x", 99)
    with pytest.raises(LockNotHeldError):
        t.renew("x", 99)
    with pytest.raises(LockNotHeldError, match="it is free"):
        t.release("free-lock", 1)
    assert json.loads(t.dump())["machines"]["catga.locks"] == before
    t.release("x", 1)
    after_first = json.loads(t.dump())["machines"]["catga.locks"]
    with pytest.raises(LockNotHeldError):
        t.release("x", 1)  # the double release
    assert json.loads(t.dump())["machines"]["catga.locks"] == after_first


def test_lock_errors_are_catga_errors_and_builtins() -> None:
    assert issubclass(InvalidLockRequestError, ValueError)
    assert issubclass(LockNotHeldError, RuntimeError)
    assert issubclass(StaleTokenError, LockNotHeldError)
    assert issubclass(LockNotAcquiredError, TimeoutError)
    for error in (InvalidLockRequestError, LockNotHeldError, StaleTokenError):
        assert issubclass(error, CatgaError)


class Untouchable:
    """A node that fails the test if the client touches it: bad input is refused first."""

    node_id = "n"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the node was used ({name}) for a request that should be refused")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("", {}),
        ("x" * 1000, {}),
        ("a\x00", {}),
        ("x", {"ttl": 0}),
        ("x", {"ttl": math.nan}),
        ("x", {"ttl": 10**9}),
        ("x", {"timeout": -1}),
        ("x", {"timeout": math.inf}),
        ("x", {"owner": ""}),
    ],
)
def test_the_client_refuses_bad_requests_before_touching_the_node(
    name: str, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InvalidLockRequestError):
        locks.acquire(Untouchable(), name, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidLockRequestError):
        locks.try_acquire(Untouchable(), name, **kwargs)  # type: ignore[arg-type]


class WithoutLockTable:
    """A node whose replicated state has no lock table (not a ClusterNode)."""

    node_id = "bare"

    def __init__(self) -> None:
        self.state_machines = ReplicatedState()
        self.extensions: dict[str, object] = {}


def test_acquiring_on_a_node_without_a_lock_table_is_a_not_registered_error() -> None:
    with pytest.raises(NotRegisteredError, match="node bare has no lock table") as caught:
        locks.acquire(WithoutLockTable(), "x")  # type: ignore[arg-type]
    assert isinstance(caught.value, CatgaError)
    assert isinstance(caught.value, LookupError)


# -- determinism and snapshots ---------------------------------------------------------------


def script(t: Replica) -> None:
    t.acquire("a", "h1", "o1", 10)
    t.acquire("a", "h2", "o2", 20, 5)
    t.acquire("a", "h3", "o3", 30, 5)
    t.acquire("b", "h4", "o4", 10)
    t.renew("a", 1)
    t.release("b", 4)
    t.acquire("c", "h5", "o5", 10)


def test_replicas_fed_the_same_entries_end_identical() -> None:
    one, two = Replica(), Replica(Events())
    script(one)
    script(two)
    assert one.dump() == two.dump()


def test_a_snapshot_restores_the_table_and_the_next_grants_continue_alike() -> None:
    original = Replica()
    script(original)
    events = Events()
    copy = Replica(events)
    copy.state.restore(original.dump())
    copy.index = original.index
    assert events.seen == [("restored", "a", "c")]
    assert copy.table.held() == original.table.held()
    assert copy.release("a", 1) == original.release("a", 1)
    assert copy.dump() == original.dump()
    assert copy.table.locks["a"]["holder"] == "h2"


# -- the lease monitor's clock ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(role: Role, running: bool = True) -> NodeStatus:
    return NodeStatus(
        node_id="n0",
        raft_id="http://n0",
        role=role,
        term=1,
        leader_raft_id=None,
        leader_id=None,
        commit_index=0,
        commit_term=0,
        last_applied=0,
        members=(),
        running=running,
    )


FOLLOWER, LEADER = status(Role.FOLLOWER), status(Role.LEADER)
ELECTED = LeadershipChange(previous=None, leading=1, stopped=False, status=LEADER)


@pytest.fixture
def monitored() -> tuple[Replica, LeaseMonitor, FakeClock]:
    clock = FakeClock()
    monitor = LeaseMonitor(clock=clock, run_thread=False)
    return Replica(monitor), monitor, clock


def test_a_lease_deadline_is_apply_time_plus_ttl_and_a_renewal_restarts_it(
    monitored: tuple[Replica, LeaseMonitor, FakeClock],
) -> None:
    t, monitor, clock = monitored
    t.acquire("x", "h1", "a", 10)
    assert monitor.deadline("x") == 1010.0
    clock.now = 1004.0
    t.renew("x", 1)
    assert monitor.deadline("x") == 1014.0
    t.release("x", 1)
    assert monitor.deadline("x") is None


def test_only_a_leader_expires_and_a_new_leader_restarts_every_clock_never_shortening(
    monitored: tuple[Replica, LeaseMonitor, FakeClock],
) -> None:
    t, monitor, clock = monitored
    t.acquire("short", "h1", "a", 2)  # deadline 1002
    clock.now = 1001.0
    t.acquire("long", "h2", "b", 30)  # deadline 1031
    clock.now = 1005.0
    assert monitor.due() == []  # a follower proposes nothing
    monitor.on_leadership(ELECTED)  # elected at 1005: every lease restarts at 1005
    assert monitor.deadline("short") == 1007.0  # was 1002: already passed, restarted
    assert monitor.deadline("long") == 1035.0  # was 1031: restarted, later
    clock.now = 1006.9
    assert monitor.due() == []
    clock.now = 1007.0
    assert monitor.due() == [Expiry("lease", "short", token=1, since=1)]
    assert monitor.due() == []  # not again at once: rescheduled RETRY_DELAY later
    clock.now = 1007.0 + locks.RETRY_DELAY
    assert monitor.due() == [Expiry("lease", "short", token=1, since=1)]
    t.expire("short", 1, 1)
    clock.now = 1035.0
    assert monitor.due() == [Expiry("lease", "long", token=2, since=2)]


def test_a_renewal_applied_after_the_deadline_was_due_supersedes_it(
    monitored: tuple[Replica, LeaseMonitor, FakeClock],
) -> None:
    t, monitor, clock = monitored
    monitor.on_leadership(ELECTED)
    t.acquire("x", "h1", "a", 5)
    clock.now = 1003.0
    t.renew("x", 1)
    clock.now = 1006.0
    assert monitor.due() == []  # the heap's old deadline (1005) is skipped
    clock.now = 1008.0
    assert monitor.due() == [Expiry("lease", "x", token=1, since=2)]


def test_a_waiter_whose_wait_passed_is_dropped_by_the_leader(
    monitored: tuple[Replica, LeaseMonitor, FakeClock],
) -> None:
    t, monitor, clock = monitored
    monitor.on_leadership(ELECTED)
    t.acquire("x", "h1", "a", 100)
    t.acquire("x", "h2", "b", 100, 3)
    clock.now = 1003.0 + locks.WAIT_GRACE
    assert monitor.due() == [Expiry("waiter", "x", holder="h2")]
    assert t.cancel("x", "h2", True) == "withdrawn"


def test_watches_see_grants_through_the_queue_and_losses(
    monitored: tuple[Replica, LeaseMonitor, FakeClock],
) -> None:
    t, monitor, _ = monitored
    first, second = monitor.watch("h1"), monitor.watch("h2")
    t.acquire("x", "h1", "a", 10)
    t.acquire("x", "h2", "b", 10, 5)
    assert (first.state, first.token, second.state) == ("granted", 1, "pending")
    t.expire("x", 1, 1)
    assert first.state == "freed"
    assert "expired" in first.reason
    assert (second.state, second.token) == ("granted", 3)
    assert second.event.is_set()


# -- fencing --------------------------------------------------------------------------------


def test_the_in_memory_fenced_resource_refuses_older_tokens() -> None:
    resource = FencedResource()
    resource.write("k", 1, 5)
    resource.write("k", 2, 5)  # the same holder again
    resource.write("k", 3, 9)
    with pytest.raises(StaleTokenError, match="token 5 refused, token 9 wrote"):
        resource.write("k", 4, 5)
    resource.write("other", 1, 2)  # tokens are per key
    assert resource.read("k") == 3
    assert resource.token("k") == 9
    assert resource.accepted == [5, 5, 9, 2]
    assert resource.refused == [5]
    with pytest.raises(InvalidLockRequestError):
        resource.write("k", 1, 0)


def test_a_fenced_read_keeps_an_old_holders_late_write_out_of_a_read_modify_write() -> None:
    resource = FencedResource()
    resource.write("n", 0, 3)
    old_value = resource.read("n", token=3)  # the old holder reads, then pauses
    new_value = resource.read("n", token=4)  # the new holder reads: the key is now fenced at 4
    with pytest.raises(StaleTokenError):
        resource.write("n", old_value + 1, 3)  # without the fenced read this would be accepted
    resource.write("n", new_value + 1, 4)
    assert resource.read("n") == 1
    with pytest.raises(StaleTokenError):
        resource.read("n", token=3)
