"""Which failures of a database server count as "unreachable" (wait and retry the same write)
rather than a failure that stops the node, and that the retry is safe when the lost write had
in fact been committed.

A MariaDB or MySQL server that restarts answers the client with PyMySQL's connection errors:
2003 (cannot connect) while it is down, 2013 / 2006 (lost, gone away) on a connection it
dropped, 1053 while shutting down, 1927 for a killed connection. SQLAlchemy wraps them all as
``OperationalError``, which ``_is_unreachable`` takes for an unreachable server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from catga_sync.errors import StorageUnavailableError
from catga_sync.raft import Entry, HardState
from catga_sync.storage import SqlStorage
from catga_sync.storage.sql import _is_unreachable

from .conftest import Backend, make_backend

MYSQL_RESTART_ERRORS = {
    2003: "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)",
    2006: "MySQL server has gone away",
    2013: "Lost connection to MySQL server during query",
    1053: "Server shutdown in progress",
    1927: "Connection was killed",
}


@pytest.mark.parametrize("code", sorted(MYSQL_RESTART_ERRORS), ids=lambda c: f"mysql-{c}")
def test_mysql_restart_errors_are_unreachable(code: int) -> None:
    pymysql = pytest.importorskip("pymysql")
    # The driver's own exception class for the code, as PyMySQL raises it.
    try:
        pymysql.err.raise_mysql_exception(
            b"\xff" + code.to_bytes(2, "little") + b"#HY000" + MYSQL_RESTART_ERRORS[code].encode()
        )
    except pymysql.err.Error as raised:
        orig = raised
    if code >= 2000:  # client-side errors: PyMySQL raises them itself, as OperationalError
        orig = pymysql.err.OperationalError(code, MYSQL_RESTART_ERRORS[code])
    wrapped = DBAPIError.instance("SELECT 1", {}, orig, pymysql.err.Error)
    assert isinstance(wrapped, OperationalError)
    assert _is_unreachable(wrapped)


def test_postgres_connection_errors_are_unreachable() -> None:
    psycopg = pytest.importorskip("psycopg")
    for orig in (
        psycopg.OperationalError("connection failed: Connection refused"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    ):
        assert _is_unreachable(DBAPIError.instance("SELECT 1", {}, orig, psycopg.Error))


@pytest.mark.parametrize("code", [1021, 1114], ids=lambda c: f"mysql-{c}")
def test_a_mysql_server_out_of_space_is_not_unreachable(code: int) -> None:
    """A server with a full disk answers, and refuses: the node must stop and say so, not
    wait for ever as for a restart."""
    pymysql = pytest.importorskip("pymysql")
    message = b"Disk full" if code == 1021 else b"The table 'raft_log' is full"
    try:
        pymysql.err.raise_mysql_exception(
            b"\xff" + code.to_bytes(2, "little") + b"#HY000" + message
        )
    except pymysql.err.Error as raised:
        wrapped = DBAPIError.instance("INSERT", {}, raised, pymysql.err.Error)
    assert isinstance(wrapped, OperationalError)
    assert not _is_unreachable(wrapped)


def test_a_postgres_server_out_of_space_is_not_unreachable() -> None:
    psycopg = pytest.importorskip("psycopg")
    orig = psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert not _is_unreachable(DBAPIError.instance("INSERT", {}, orig, psycopg.Error))


@pytest.fixture(params=["postgres", "mysql"])
def server_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def write(storage: SqlStorage, index: int) -> None:
    storage.persist(
        hard_state=HardState(1, None, index - 1),
        entries=[Entry(index, 1, f"e{index}".encode())],
        snapshot=None,
        snapshot_replaces_log=False,
    )


def test_a_retry_after_a_commit_reported_lost_but_done_writes_it_once(
    server_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen on MariaDB stopped under a running node: the server committed, then dropped the
    # connection before the client read the answer. The retry of that same write then met its
    # own rows (a duplicate key) and stopped the node.
    storage = server_backend.make()
    assert isinstance(storage, SqlStorage)
    storage.open()
    write(storage, 1)
    real = storage._transaction

    @contextmanager
    def committed_then_lost(engine: Engine) -> Iterator[Connection]:
        with real(engine) as conn:
            yield conn
        lost = ConnectionError("lost connection while committing")
        raise OperationalError("COMMIT", {}, lost, connection_invalidated=True)

    monkeypatch.setattr(storage, "_transaction", committed_then_lost)
    with pytest.raises(StorageUnavailableError):
        write(storage, 2)
    monkeypatch.undo()
    write(storage, 2)  # the loop's retry of the same write
    write(storage, 3)
    state = server_backend.reopen(storage)
    assert [e.index for e in state.entries] == [1, 2, 3]
    assert state.hard_state == HardState(1, None, 2)
