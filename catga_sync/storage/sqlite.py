"""What SQLite needs that other databases do not: pragmas on every connection (WAL, the chosen
``synchronous`` level, a busy timeout), real transactions (SQLAlchemy's recipe for the sqlite3
driver's legacy transaction control), and the two hot statements compiled once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, Update, event, insert

from ..raft import HardState

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "SqliteStatements", "configure_sqlite"]

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
        # when another connection to the same file writes.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
