"""The ownership lock across a restart of the database server (PostgreSQL and MariaDB).

A restart ends every session, and the session lock that keeps a second process from running
the same node (``pg_try_advisory_lock`` / ``GET_LOCK``) with it. The storage takes the lock
again on its first write once the server is back; if another process took it first, the write
is refused with a :class:`StorageError` naming that process, and the node stops, losing nothing
it acknowledged. Each test runs on a throwaway server of its own (``servers.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers import poll
from sqlalchemy import create_engine

from catga_sync.errors import NodeNotRunningError, StorageError, StorageUnavailableError
from catga_sync.raft import Entry, HardState
from catga_sync.storage import SqlStorage, open_storage
from catga_sync.storage.ownership import acquire_database_ownership

from .servers import (
    WAIT,
    Gate,
    MariaDbServer,
    PostgresServer,
    Server,
    Writer,
    check_nothing_lost,
    outage,
    stop_all,
    three_nodes,
    throwaway,
)


@pytest.fixture(params=[PostgresServer, MariaDbServer], ids=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with throwaway(request.param) as made:
        yield made


def write(storage: SqlStorage, index: int, term: int = 1) -> None:
    storage.persist(
        hard_state=HardState(term, None, index),
        entries=[Entry(index, term, f"e{index}".encode())],
        snapshot=None,
        snapshot_replaces_log=False,
    )


def opened(server: Server, node_id: str = "n0") -> SqlStorage:
    storage = open_storage(node_id, server.url)
    assert isinstance(storage, SqlStorage)
    storage.open()
    return storage


def stored_indexes(server: Server, node_id: str = "n0") -> list[int]:
    """The indexes of the entries stored for ``node_id``, read through a new storage."""
    storage = open_storage(node_id, server.url)
    try:
        return [e.index for e in storage.open().entries]
    finally:
        storage.close()


def test_the_lock_is_taken_again_once_the_server_is_back(server: Server) -> None:
    storage = opened(server)
    try:
        write(storage, 1)
        server.stop()
        with pytest.raises(StorageUnavailableError):
            write(storage, 2)
        server.start()
        # Between the restart and the next write nobody holds the lock: that write takes it.
        write(storage, 2)
        with pytest.raises(StorageError, match="already running"):
            open_storage("n0", server.url).open()
    finally:
        storage.close()
    assert stored_indexes(server) == [1, 2]


def test_a_restart_with_no_failed_write_still_takes_the_lock_again(server: Server) -> None:
    # The server went away and came back between two writes: the first write after finds only
    # dead connections, the pool makes a new one, and that is enough to check the lock.
    storage = opened(server)
    try:
        write(storage, 1)
        server.stop()
        server.start()
        write(storage, 2)
        with pytest.raises(StorageError, match="already running"):
            open_storage("n0", server.url).open()
    finally:
        storage.close()


def test_a_lock_taken_by_another_process_meanwhile_refuses_the_write(server: Server) -> None:
    storage = opened(server)
    intruder_engine = create_engine(server.url)
    try:
        write(storage, 1)
        server.stop()
        with pytest.raises(StorageUnavailableError):
            write(storage, 2)
        server.start()
        # Only the lock: the owner row still names the first storage, so only the lock can
        # tell that another process is there.
        intruder = acquire_database_ownership(
            intruder_engine,
            node_id="n0",
            table_prefix=storage.table_prefix,
            where="the test",
            owner_hint=lambda: None,
        )
        with pytest.raises(StorageError, match="lost its ownership lock") as caught:
            write(storage, 2)
        assert not isinstance(caught.value, StorageUnavailableError)  # a stop, not a retry
        assert "locked by" in str(caught.value)
        if server.name == "postgres":  # the holder's session names its process
            assert f"pid {os.getpid()}@" in str(caught.value)
        with pytest.raises(StorageError, match="lost its ownership lock"):
            write(storage, 2)  # and again: it never goes on writing
        intruder.release()
    finally:
        storage.close()
        intruder_engine.dispose()
    assert stored_indexes(server) == [1]


def test_a_node_whose_lock_was_taken_during_the_outage_stops_losing_nothing(
    server: Server,
) -> None:
    nodes = three_nodes(server, "own", gated=True)
    victim = nodes[0]
    gate = victim._storage
    assert isinstance(gate, Gate)
    intruder = None
    try:
        with Writer(nodes) as writer:
            writer.wait_for(20, "writes before the restart")
            gate.open_.clear()  # the victim's next write waits, whatever the others do
            outage(server, nodes, 1.0)
            poll(gate.waiting.is_set, WAIT, "the victim's write waiting")
            # Another process opens the victim's state while the victim cannot write.
            intruder = open_storage(victim.node_id, server.url)
            intruder.open()
            gate.open_.set()
            poll(lambda: not victim.running, WAIT, "the victim stopping")
            writer.wait_for(20, "writes on the two others")
        with pytest.raises(NodeNotRunningError, match="lost its ownership lock") as caught:
            victim.read_barrier(timeout=1)
        assert "locked by" in str(caught.value)
        check_nothing_lost(nodes[1:], writer.acknowledged)
    finally:
        stop_all(nodes)
        if intruder is not None:
            intruder.close()
