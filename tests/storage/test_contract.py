"""The storage contract (``catga_sync.storage.base.Storage``), the same tests on every backend."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading

import pytest
from sqlalchemy import delete, select, update

from catga_sync.errors import StorageError
from catga_sync.raft import (
    Entry,
    EntryType,
    HardState,
    Membership,
    PersistedState,
    RaftConfig,
    RaftCore,
    Role,
    Snapshot,
    SnapshotMeta,
)
from catga_sync.storage import SCHEMA_VERSION, Storage, build_tables, persist_ready

from .conftest import Backend

EMPTY = PersistedState(HardState(), None, ())
MEMBERS = Membership(frozenset({"http://127.0.0.1:5000", "http://127.0.0.1:5001"}))


def entries(first: int, last: int, term: int, size: int = 8) -> list[Entry]:
    """Entries first..last in ``term``, each with data that says where it belongs."""
    return [
        Entry(i, term, hashlib.sha256(f"{i}/{term}".encode()).digest()[:size])
        for i in range(first, last + 1)
    ]


def append(storage: Storage, items: list[Entry], hard: HardState | None = None) -> None:
    storage.persist(hard_state=hard, entries=items, snapshot=None, snapshot_replaces_log=False)


def snapshot_at(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, MEMBERS), data)


# --------------------------------------------------------------------------------------------
# Round trips


def test_a_fresh_storage_is_empty(backend: Backend) -> None:
    assert backend.make().open() == EMPTY


def test_hard_state_entries_and_snapshot_survive_a_reopen(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    snap = Snapshot(
        SnapshotMeta(3, 2, Membership(frozenset({"a", "b"}), frozenset({"c"}))), b"snap"
    )
    storage.persist(
        hard_state=HardState(term=5, vote="http://127.0.0.1:5001", commit=4),
        entries=entries(4, 6, 5),
        snapshot=snap,
        snapshot_replaces_log=True,
    )
    state = backend.reopen(storage)
    assert state == PersistedState(
        HardState(5, "http://127.0.0.1:5001", 4), snap, tuple(entries(4, 6, 5))
    )
    assert state.snapshot is not None and state.snapshot.data == b"snap"


def test_hard_state_is_replaced_and_a_vote_can_be_cleared(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    storage.persist(
        hard_state=HardState(1, "a", 0), entries=[], snapshot=None, snapshot_replaces_log=False
    )
    storage.persist(
        hard_state=HardState(2, None, 0), entries=[], snapshot=None, snapshot_replaces_log=False
    )
    assert backend.reopen(storage).hard_state == HardState(2, None, 0)


def test_terms_and_indexes_up_to_2_63_round_trip(backend: Backend) -> None:
    big = 2**63 - 2
    storage = backend.make()
    storage.open()
    storage.persist(
        hard_state=HardState(big, "a", big),
        entries=[Entry(big, big, b"x")],
        snapshot=snapshot_at(big - 1, big - 1),
        snapshot_replaces_log=True,
    )
    state = backend.reopen(storage)
    assert state.hard_state == HardState(big, "a", big)
    assert state.entries == (Entry(big, big, b"x"),)


def test_entry_types_round_trip(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    items = [Entry(1, 1, b""), Entry(2, 1, b'{"change":1}', EntryType.CONFIG), Entry(3, 1, b"c")]
    append(storage, items)
    assert backend.reopen(storage).entries == tuple(items)


def test_an_empty_persist_changes_nothing(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    append(storage, entries(1, 3, 1), HardState(1, None, 2))
    storage.persist(hard_state=None, entries=[], snapshot=None, snapshot_replaces_log=False)
    state = backend.reopen(storage)
    assert state.hard_state == HardState(1, None, 2)
    assert state.entries == tuple(entries(1, 3, 1))


# --------------------------------------------------------------------------------------------
# Log rules


def test_entries_overwrite_the_suffix_from_their_first_index(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    append(storage, entries(1, 5, 1))
    append(storage, entries(3, 4, 2))
    assert backend.reopen(storage).entries == tuple(entries(1, 2, 1) + entries(3, 4, 2))


def test_entries_may_extend_the_log(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    append(storage, entries(1, 2, 1))
    append(storage, entries(3, 4, 1))
    assert backend.reopen(storage).entries == tuple(entries(1, 4, 1))


def test_a_snapshot_compacts_entries_at_and_below_its_index(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    append(storage, entries(1, 10, 1))
    snap = snapshot_at(6, 1)
    storage.persist(hard_state=None, entries=[], snapshot=snap, snapshot_replaces_log=False)
    state = backend.reopen(storage)
    assert state.snapshot == snap
    assert state.entries == tuple(entries(7, 10, 1))


def test_a_snapshot_from_the_leader_replaces_the_whole_log(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    append(storage, entries(1, 10, 1))
    snap = snapshot_at(20, 3)
    storage.persist(
        hard_state=HardState(3, None, 20), entries=[], snapshot=snap, snapshot_replaces_log=True
    )
    storage.persist(
        hard_state=None, entries=entries(21, 22, 3), snapshot=None, snapshot_replaces_log=False
    )
    state = backend.reopen(storage)
    assert state.snapshot == snap
    assert state.entries == tuple(entries(21, 22, 3))
    assert state.hard_state == HardState(3, None, 20)


def test_snapshot_then_entries_then_hard_state_in_one_persist(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    append(storage, entries(1, 8, 1))
    storage.persist(
        hard_state=HardState(2, None, 9),
        entries=entries(7, 9, 2),
        snapshot=snapshot_at(5, 1),
        snapshot_replaces_log=False,
    )
    state = backend.reopen(storage)
    assert state.entries == tuple(entries(6, 6, 1) + entries(7, 9, 2))
    assert state.hard_state.commit == 9


def test_a_later_snapshot_replaces_the_earlier_one(backend: Backend) -> None:
    storage = backend.make()
    storage.open()
    append(storage, entries(1, 10, 1))
    storage.persist(
        hard_state=None, entries=[], snapshot=snapshot_at(3, 1, b"old"), snapshot_replaces_log=False
    )
    storage.persist(
        hard_state=None, entries=[], snapshot=snapshot_at(8, 1, b"new"), snapshot_replaces_log=False
    )
    state = backend.reopen(storage)
    assert state.snapshot == snapshot_at(8, 1, b"new")
    assert state.entries == tuple(entries(9, 10, 1))


@pytest.mark.parametrize(
    ("first", "reason"), [(5, "gap"), (0, "compacted")], ids=["gap", "below-snapshot"]
)
def test_a_persist_that_would_break_the_log_is_refused_and_stores_nothing(
    backend: Backend, first: int, reason: str
) -> None:
    storage = backend.make()
    storage.open()
    storage.persist(
        hard_state=None, entries=[], snapshot=snapshot_at(1, 1), snapshot_replaces_log=True
    )
    append(storage, entries(2, 3, 1), HardState(1, None, 3))
    bad = [Entry(max(first, 1), 2, b"x")] if reason == "gap" else [Entry(1, 2, b"x")]
    with pytest.raises(StorageError, match="refusing to store entries"):
        append(storage, bad, HardState(2, None, 3))
    state = backend.reopen(storage)
    assert state.entries == tuple(entries(2, 3, 1))
    assert state.hard_state == HardState(1, None, 3)


# --------------------------------------------------------------------------------------------
# Data


def test_a_1_mib_entry_and_binary_data_round_trip(backend: Backend) -> None:
    big = os.urandom(1 << 20)
    binary = bytes(range(256)) * 4
    storage = backend.make()
    storage.open()
    items = [Entry(1, 1, big), Entry(2, 1, binary), Entry(3, 1, b"\x00"), Entry(4, 1, b"")]
    append(storage, items)
    snap = Snapshot(SnapshotMeta(4, 1, MEMBERS), os.urandom(3 << 20) + binary)
    storage.persist(hard_state=None, entries=[], snapshot=snap, snapshot_replaces_log=False)
    append(storage, [Entry(5, 1, big)])
    state = backend.reopen(storage)
    assert state.snapshot is not None and state.snapshot.data == snap.data
    assert state.entries == (Entry(5, 1, big),)


def test_many_entries_in_one_persist(backend: Backend) -> None:
    items = entries(1, 5000, 1, size=32)
    storage = backend.make()
    storage.open()
    append(storage, items, HardState(1, None, 5000))
    state = backend.reopen(storage)
    assert len(state.entries) == 5000
    assert state.entries == tuple(items)


def test_two_nodes_sharing_a_database_keep_separate_state(backend: Backend) -> None:
    one, two = backend.make("node1"), backend.make("node2")
    one.open()
    two.open()
    append(one, entries(1, 3, 1), HardState(1, "node1", 2))
    append(two, entries(1, 5, 2), HardState(2, "node2", 1))
    two.persist(
        hard_state=None, entries=[], snapshot=snapshot_at(2, 2), snapshot_replaces_log=False
    )
    one.close()
    two.close()
    first, second = backend.make("node1").open(), backend.make("node2").open()
    assert first == PersistedState(HardState(1, "node1", 2), None, tuple(entries(1, 3, 1)))
    assert second == PersistedState(
        HardState(2, "node2", 1), snapshot_at(2, 2), tuple(entries(3, 5, 2))
    )


def test_nodes_opening_a_fresh_database_at_once_all_succeed(backend: Backend) -> None:
    """Several nodes sharing a database create its tables on first start, racing each other."""
    results: dict[str, object] = {}

    def start(node_id: str) -> None:
        try:
            results[node_id] = backend.make(node_id).open()
        except Exception as exc:  # reported below, with the node that failed
            results[node_id] = exc

    threads = [threading.Thread(target=start, args=(f"node{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {f"node{k}": EMPTY for k in range(4)}


# --------------------------------------------------------------------------------------------
# Life cycle


def test_close_is_idempotent_and_the_state_can_be_opened_again(backend: Backend) -> None:
    storage = backend.make()
    storage.close()
    storage.open()
    append(storage, entries(1, 1, 1))
    storage.close()
    storage.close()
    assert storage.open().entries == tuple(entries(1, 1, 1))
    storage.close()


def test_opening_twice_and_persisting_unopened_are_errors(backend: Backend) -> None:
    storage = backend.make()
    with pytest.raises(StorageError, match="not open"):
        append(storage, entries(1, 1, 1))
    storage.open()
    with pytest.raises(StorageError, match="already open"):
        storage.open()


def test_describe_says_where_the_state_lives(backend: Backend) -> None:
    where = backend.make().describe()
    if backend.name == "memory":
        assert "memory" in where
    elif backend.name == "sqlite":
        assert where.endswith("node0.sqlite3")
    else:
        assert where.split("://")[0] in backend.state  # type: ignore[operator]


def test_a_core_restarts_from_what_its_readies_persisted(backend: Backend) -> None:
    """The driver's path: persist every Ready of a single-node core, then rebuild the core."""
    me = "http://127.0.0.1:5000"
    config = RaftConfig(node_id=me, membership=Membership(frozenset({me})))
    storage = backend.make()
    core = RaftCore(config, rng=random.Random(1), persisted=storage.open())

    def drive() -> None:
        while core.has_ready():
            ready = core.ready()
            persist_ready(storage, ready)
            core.advance(ready)

    for _ in range(100):
        core.tick()
        drive()
        if core.role is Role.LEADER:
            break
    assert core.role is Role.LEADER
    for k in range(5):
        core.propose(f"command {k}".encode())
        drive()
    last, committed, term = core.log.last_index, core.log.committed, core.term
    assert committed == last

    persisted = backend.reopen(storage)
    restarted = RaftCore(config, rng=random.Random(2), persisted=persisted)
    assert restarted.log.last_index == last
    assert restarted.log.committed == committed
    assert restarted.term == term
    assert persisted.hard_state.vote == me
    assert [e.data for e in persisted.entries if e.data][-5:] == [
        f"command {k}".encode() for k in range(5)
    ]


# --------------------------------------------------------------------------------------------
# SQL only: the schema version, damage, ownership


def test_the_schema_version_is_recorded(sql_backend: Backend) -> None:
    sql_backend.make().open()
    meta = build_tables(sql_backend.prefix).meta
    with sql_backend.connect() as conn:
        value = conn.execute(
            select(meta.c.value).where(meta.c.node_id == "node0", meta.c.key == "schema_version")
        ).scalar()
    assert value == str(SCHEMA_VERSION)


@pytest.mark.parametrize("stored", [str(SCHEMA_VERSION + 1), "banana"])
def test_a_newer_or_unknown_schema_version_is_refused(sql_backend: Backend, stored: str) -> None:
    storage = sql_backend.make()
    storage.open()
    storage.close()
    meta = build_tables(sql_backend.prefix).meta
    with sql_backend.connect() as conn:
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=stored))
    with pytest.raises(StorageError) as caught:
        sql_backend.make().open()
    message = str(caught.value)
    assert stored in message
    assert f"supports schema version {SCHEMA_VERSION}" in message
    assert "upgrade catga_sync" in message


def test_a_gap_in_the_stored_log_is_reported_with_the_recovery_steps(sql_backend: Backend) -> None:
    storage = sql_backend.make()
    storage.open()
    append(storage, entries(1, 5, 1), HardState(1, None, 2))
    storage.close()
    log = build_tables(sql_backend.prefix).log
    with sql_backend.connect() as conn:
        conn.execute(delete(log).where(log.c.idx == 3))
    with pytest.raises(StorageError) as caught:
        sql_backend.make().open()
    message = str(caught.value)
    assert "node 'node0'" in message and "damaged" in message and "expected 3" in message
    assert "Stop all nodes" in message and "restore all of them from the backup" in message
    if sql_backend.name == "sqlite":
        assert str(storage.describe()) in message
    else:
        assert f"DELETE FROM {sql_backend.prefix}log WHERE node_id = 'node0'" in message


def test_a_commit_index_beyond_the_log_is_reported(sql_backend: Backend) -> None:
    storage = sql_backend.make()
    storage.open()
    append(storage, entries(1, 5, 1), HardState(1, None, 5))
    storage.close()
    log = build_tables(sql_backend.prefix).log
    with sql_backend.connect() as conn:
        conn.execute(delete(log).where(log.c.idx >= 4))
    with pytest.raises(StorageError, match="commit index 5 is beyond its last stored entry 3"):
        sql_backend.make().open()


def test_a_second_storage_for_a_running_node_fails_at_once(sql_backend: Backend) -> None:
    first = sql_backend.make()
    first.open()
    with pytest.raises(StorageError) as caught:
        sql_backend.make().open()
    message = str(caught.value)
    assert message.startswith("node 'node0' is already running: its state ")
    assert f"pid {os.getpid()}" in message
    assert "stop that process first, or give this one another node id" in message
    first.close()
    sql_backend.make().open()


def test_another_process_holding_the_node_is_named_in_the_error(sql_backend: Backend) -> None:
    holder, pid = sql_backend.spawn_holder()
    with pytest.raises(StorageError) as caught:
        sql_backend.make().open()
    message = str(caught.value)
    assert "node 'node0' is already running" in message
    assert f"pid {pid}" in message
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.stdout is not None and holder.stdout.readline() == "closed\n"
    assert holder.wait() == 0
    sql_backend.make().open()  # released by close(): free at once


def test_the_lock_is_free_again_once_its_holder_is_killed(sql_backend: Backend) -> None:
    holder, _ = sql_backend.spawn_holder()
    with pytest.raises(StorageError, match="already running"):
        sql_backend.make().open()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    sql_backend.open_when_free()


def test_other_nodes_are_not_locked_out(sql_backend: Backend) -> None:
    sql_backend.spawn_holder("node1")
    state = sql_backend.make("node2").open()  # not refused: the lock is node1's alone
    assert state == EMPTY  # and node2's own state, empty
    with pytest.raises(StorageError, match="node 'node1' is already running"):
        sql_backend.make("node1").open()  # while node1 stays locked


def test_a_process_that_lost_its_lock_cannot_overwrite_the_new_owner(sql_backend: Backend) -> None:
    old = sql_backend.make()
    old.open()
    append(old, entries(1, 2, 1), HardState(1, None, 1))
    sql_backend.break_lock()
    new, _ = sql_backend.open_when_free()
    append(new, entries(3, 3, 2), HardState(2, None, 2))
    with pytest.raises(StorageError, match="no longer owns its state") as caught:
        append(old, entries(3, 3, 1), HardState(1, None, 3))
    assert f"pid {os.getpid()}" in str(caught.value)
    old.close()
    state = sql_backend.reopen(new)
    assert state.entries == tuple(entries(1, 2, 1) + entries(3, 3, 2))
    assert state.hard_state == HardState(2, None, 2)
