"""What SQLite needs that other databases do not: pragmas on every connection (WAL, the chosen
``synchronous`` level, a busy timeout, incremental vacuum), real transactions (SQLAlchemy's
recipe for the sqlite3 driver's legacy transaction control), the two hot statements compiled
once, and giving the space a snapshot frees back to the file system.

Space: a new file is created with ``auto_vacuum=INCREMENTAL`` (SQLite takes it only before the
first table exists), and after every persist that carries a snapshot — the log below it was
just deleted — :func:`give_back_space` runs ``PRAGMA incremental_vacuum`` and a truncating WAL
checkpoint, so the file shrinks to what the state holds. A file created by an older version
(``auto_vacuum=NONE``) reuses its free pages but never shrinks until ``catga compact`` (a
``VACUUM`` with the node stopped) converts it; the node says so once when it opens one."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, Update, event, insert

from ..raft import HardState

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "SqliteStatements", "configure_sqlite", "give_back_space"]

log = logging.getLogger("catga_sync.storage")

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long a SQLite statement waits for another connection's write lock before failing."""


@dataclass(frozen=True)
class SqliteStatements:
    """The two statements of every persist (append entries, update the hard state), compiled
    by SQLAlchemy for SQLite once, and run on the transaction's driver connection: inside the
    same ``engine.begin()`` transaction, minus SQLAlchemy's per-statement execution work,
    which measured here was half the CPU of a persist."""

    insert_sql: str
    insert_keys: tuple[str, ...]
    update_sql: str
    update_keys: tuple[str, ...]

    @classmethod
    def compile(
        cls, log_table: Table, update_hard_state: Update, engine: Engine
    ) -> SqliteStatements | None:
        inserted = insert(log_table).compile(dialect=engine.dialect)
        updated = update_hard_state.compile(dialect=engine.dialect)
        if inserted.positiontup is None or updated.positiontup is None:
            return None  # a driver with named parameters: keep SQLAlchemy's path
        return cls(
            str(inserted), tuple(inserted.positiontup), str(updated), tuple(updated.positiontup)
        )

    def insert_entries(self, conn: Connection, rows: list[dict[str, object]]) -> None:
        keys = self.insert_keys
        driver_connection(conn).executemany(
            self.insert_sql, [tuple(row[k] for k in keys) for row in rows]
        )

    def update_hard_state(self, conn: Connection, node_id: str, hard_state: HardState) -> bool:
        """True when the row was there and is updated (else the caller inserts it)."""
        values = {
            "b_node": node_id,
            "b_term": hard_state.term,
            "b_vote": hard_state.vote,
            "b_commit": hard_state.commit,
        }
        cursor = driver_connection(conn).execute(
            self.update_sql, tuple(values[k] for k in self.update_keys)
        )
        return bool(cursor.rowcount == 1)


@contextmanager
def begun(connection: Connection) -> Iterator[Connection]:
    with connection.begin():
        yield connection


def driver_connection(conn: Connection) -> Any:
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    return dbapi


def configure_sqlite(engine: Engine, synchronous: str) -> None:
    """WAL, the chosen ``synchronous`` level and a busy timeout on every connection, and real
    transactions (SQLAlchemy's recipe for the sqlite3 driver's legacy transaction control)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from issuing BEGIN itself (it skips it before some statements);
        # _on_begin below emits our own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _incremental_vacuum(cursor)
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                log.warning(
                    "SQLite refused WAL mode (journal_mode=%s); the file system may not "
                    "support it. State stays durable, but writes are slower",
                    mode[0] if mode else None,
                )
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so a transaction never fails half-way
        # when another connection to the same file writes. On the driver's connection, not
        # exec_driver_sql: SQLAlchemy's execution machinery cost a quarter of a persist's CPU.
        driver_connection(conn).execute("BEGIN IMMEDIATE")


_hinted: set[str] = set()


def _incremental_vacuum(cursor: Any) -> None:
    """Ask a new, empty file for incremental vacuum (before WAL mode and before any table, the
    only time SQLite takes it); say once per file when an existing one has none."""
    pages = cursor.execute("PRAGMA page_count").fetchone()
    if not pages or pages[0] == 0:
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        return
    mode = cursor.execute("PRAGMA auto_vacuum").fetchone()
    if not mode or mode[0] != 0:
        return  # incremental (or full) already
    databases = cursor.execute("PRAGMA database_list").fetchall()
    path = str(databases[0][2]) if databases else "?"
    if path not in _hinted:
        _hinted.add(path)
        log.info(
            "SQLite state file %s was created without incremental vacuum: it reuses the space "
            "snapshots free but never shrinks. To let it shrink, stop the node once and run "
            "`catga compact --state <its state directory or URL>`",
            path,
        )


def give_back_space(dbapi_connection: Any) -> None:
    """After a snapshot deleted the log below it: hand the free pages back to the file system
    (``PRAGMA incremental_vacuum``, a no-op on a file without incremental vacuum) and truncate
    the write-ahead log. Outside any transaction; a failure is logged, never raised: the state
    is already durable, only the space waits for the next snapshot."""
    try:
        # executescript steps the pragma to its end; execute() would free one page per call.
        dbapi_connection.executescript("PRAGMA incremental_vacuum;")
        dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("SQLite could not give back free space after a snapshot: %s", exc)


def sqlite_size(path: Path) -> int:
    """Bytes of the SQLite database ``path`` and its ``-wal``, ``-shm`` and ``-journal`` files
    (shared by the nodes whose state is in that file). Safe from any thread."""
    total = 0
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            continue
    return total
