"""Raft state in SQL, through SQLAlchemy Core: SQLite (the embedded default), PostgreSQL, MySQL.

Four tables, named with a configurable prefix (``catga_`` by default), each with a ``node_id``
column so that several nodes can share one database::

    {prefix}meta        (node_id, key, value)           schema version, current owner
    {prefix}hard_state  (node_id, term, vote, commit_index)
    {prefix}log         (node_id, idx, term, type, data)
    {prefix}snapshot    (node_id, idx, term, membership, data)

One :meth:`SqlStorage.persist` is one transaction: snapshot, then entries (inserted in batches),
then hard state. Each transaction first checks that this process still owns the node's state (its
token in the ``owner`` row), so a process that lost its ownership lock (a dropped database
session, a deleted lock file) cannot overwrite the state of the process that took over. On
SQLite the row is re-read only when another connection has written to the file since the last
check (``PRAGMA data_version``): a new owner must write its token before it writes anything
else, so an unchanged file still has ours, and the check costs one pragma instead of a query.

A database server that restarts ends every session, and the ownership lock's with it. So after
the storage had to open a new connection (the pool's were dead) or a persist found the server
unreachable, the next persist first makes sure the lock is held again (taking it on a new
session); if another process took it meanwhile, the persist raises :class:`StorageError` naming
it, and writes nothing.

The hot path (appending entries, updating the hard state) uses statements built once, so a
persist does not pay for building and hashing SQL expressions; it skips the delete of
overwritten entries when the entries only extend the stored log.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)

from .._version import __version__
from ..errors import ConfigError, InvalidMessageError, StorageError, StorageUnavailableError
from ..raft import Entry, EntryType, HardState, PersistedState, Snapshot
from ..raft.codec import membership_to_dict, snapshot_meta_from_dict
from ._common import LogBounds, check_loaded, check_node_id, recovery_steps
from .columns import Blob
from .ownership import (
    FileOwnership,
    Ownership,
    acquire_database_ownership,
    describe_holder,
    holder_record,
)
from .sqlite import SqliteStatements, begun, configure_sqlite, driver_connection, give_back_space

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "SCHEMA_VERSION",
    "SqlStorage",
    "Tables",
    "build_tables",
    "sqlite_file_name",
]

log = logging.getLogger("catga_sync.storage")

SCHEMA_VERSION = 1
"""The layout of the tables this code writes. Bump it with every change to the tables."""
DEFAULT_TABLE_PREFIX = "catga_"

_SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb")
_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]*\Z")
_MAX_PREFIX_LENGTH = 32
"""Keeps ``{prefix}hard_state`` and its constraint names well under PostgreSQL's 63 characters."""
_FILE_PART_RE = re.compile(r"[A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]*\Z")
_BATCH_ROWS = 500
_BATCH_BYTES = 4 << 20
"""An insert batch stops at this many rows or bytes, keeping statements well under MySQL's
``max_allowed_packet`` (16 MiB by default on MariaDB)."""

_SCHEMA_VERSION_KEY = "schema_version"
_OWNER_KEY = "owner"


@dataclass(frozen=True, slots=True)
class Tables:
    """The tables of one prefix, on their own :class:`~sqlalchemy.MetaData`."""

    metadata: MetaData
    meta: Table
    hard_state: Table
    log: Table
    snapshot: Table


def check_table_prefix(table_prefix: object) -> str:
    """Return ``table_prefix`` when it makes safe table names; raise :class:`ConfigError`."""
    if not isinstance(table_prefix, str) or not _PREFIX_RE.match(table_prefix):
        raise ConfigError(
            f"table prefix {table_prefix!r} must start with a lowercase letter or '_' and hold "
            "only lowercase letters, digits and '_', e.g. 'catga_' (it is pasted into table "
            "names; PostgreSQL folds case, MySQL on Linux does not)"
        )
    if len(table_prefix) > _MAX_PREFIX_LENGTH:
        raise ConfigError(
            f"table prefix {table_prefix!r} is longer than {_MAX_PREFIX_LENGTH} characters; "
            "table names must fit the databases' identifier limits"
        )
    return table_prefix


def build_tables(table_prefix: str = DEFAULT_TABLE_PREFIX) -> Tables:
    """The four tables of a prefix (to create, inspect, or drop them, e.g. in tests)."""
    p = check_table_prefix(table_prefix)
    metadata = MetaData()
    meta = Table(
        f"{p}meta",
        metadata,
        Column("node_id", String(255), primary_key=True),
        Column("key", String(64), primary_key=True),
        Column("value", String(1024), nullable=False),
    )
    hard_state = Table(
        f"{p}hard_state",
        metadata,
        Column("node_id", String(255), primary_key=True),
        Column("term", BigInteger, nullable=False),
        Column("vote", String(255), nullable=True),
        Column("commit_index", BigInteger, nullable=False),
    )
    log_table = Table(
        f"{p}log",
        metadata,
        Column("node_id", String(255), primary_key=True),
        Column("idx", BigInteger, primary_key=True, autoincrement=False),
        Column("term", BigInteger, nullable=False),
        Column("type", String(16), nullable=False),
        Column("data", Blob(), nullable=False),
    )
    snapshot = Table(
        f"{p}snapshot",
        metadata,
        Column("node_id", String(255), primary_key=True),
        Column("idx", BigInteger, nullable=False),
        Column("term", BigInteger, nullable=False),
        Column("membership", Text, nullable=False),
        Column("data", Blob(), nullable=False),
    )
    return Tables(metadata, meta, hard_state, log_table, snapshot)


def sqlite_file_name(node_id: str) -> str:
    """The file a node's state gets in a state directory: ``<node_id>.sqlite3``."""
    _check_file_part(node_id, "a state file name")
    return f"{node_id}.sqlite3"


def _check_file_part(node_id: str, what: str) -> None:
    if not _FILE_PART_RE.match(node_id) or len(node_id) > 200:
        raise ConfigError(
            f"node_id {node_id!r} cannot be used in {what}: use at most 200 letters, digits "
            "and '.', '_', '-', ':', '@', '+', not starting with '.'"
        )


def _mask_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _normalize_synchronous(value: object) -> str:
    mode = value.upper() if isinstance(value, str) else ""
    if mode not in ("FULL", "NORMAL"):
        raise ConfigError(
            f"sqlite_synchronous must be 'FULL' (durable against power loss, the default) or "
            f"'NORMAL' (faster; may lose the last transactions on power loss), got {value!r}"
        )
    return mode


class SqlStorage:
    """One node's Raft state in a SQL database (see the module docstring for the tables).

    ``url`` is a SQLAlchemy URL: ``sqlite:////abs/path/node0.sqlite3``,
    ``postgresql+psycopg://user:pw@host/db`` or ``mysql+pymysql://user:pw@host/db``.
    Nothing connects before :meth:`open`. ``engine_options`` go to
    :func:`sqlalchemy.create_engine` (``connect_args`` for TLS, pool sizes...).
    """

    def __init__(
        self,
        node_id: str,
        url: str | URL,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        sqlite_synchronous: str = "FULL",
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.node_id = check_node_id(node_id)
        self.table_prefix = check_table_prefix(table_prefix)
        self.sqlite_synchronous = _normalize_synchronous(sqlite_synchronous)
        self.tables = build_tables(table_prefix)
        try:
            parsed = make_url(url)
            dialect = parsed.get_backend_name()
        except (ArgumentError, ValueError):
            # Neither the URL nor the parser's message (which quotes it) may show a password.
            raise ConfigError(
                f"persistent state URL {_mask_password(str(url))!r} is not a valid SQLAlchemy "
                "URL: write e.g. postgresql+psycopg://user:password@host/db, or give a directory "
                "for SQLite files"
            ) from None
        if dialect not in _SUPPORTED_DIALECTS:
            raise ConfigError(
                f"persistent state URL {parsed.render_as_string(hide_password=True)!r} names "
                f"a {dialect} database; catga_sync supports sqlite:///, postgresql+psycopg:// "
                "and mysql+pymysql://"
            )
        self.is_sqlite = dialect == "sqlite"
        self.is_postgresql = dialect == "postgresql"
        self.sqlite_path: Path | None = None
        if self.is_sqlite:
            database = parsed.database or ""
            if database in ("", ":memory:") or database.startswith("file:"):
                raise ConfigError(
                    f"persistent state URL {str(url)!r} names no SQLite file; give a file "
                    "(sqlite:////data/node0.sqlite3) or leave persistent_state_path unset for "
                    "in-memory state"
                )
            self.sqlite_path = Path(database).expanduser().resolve()
            parsed = parsed.set(database=str(self.sqlite_path))
            if self.sqlite_path.name != f"{self.node_id}.sqlite3":
                _check_file_part(self.node_id, "a lock file name")
        self.url = parsed
        self._engine_options = dict(engine_options or {})
        self._engine: Engine | None = None
        self._ownership: Ownership | None = None
        self._owner_value = ""
        self._outcome_unknown = False
        """The last persist failed as unreachable: its commit may have landed all the same (the
        connection broke while committing), so the retry must not assume the log it knew."""
        self._recheck_ownership = False
        """A new connection was made, or the server was unreachable: on the next persist, make
        sure the ownership lock's session survived (a server restart ends every session)."""
        self._bounds = LogBounds()
        self._mutex = threading.Lock()
        self._sqlite_statements: SqliteStatements | None = None
        self._sqlite_connection: Connection | None = None
        """SQLite: the hot statements, compiled once and run on the driver's connection."""
        self._owner_seen: tuple[Any, int] | None = None
        """SQLite: (connection, data_version) at which the owner row last held our token."""
        t = self.tables
        self._delete_from = delete(t.log).where(
            t.log.c.node_id == bindparam("b_node"), t.log.c.idx >= bindparam("b_first")
        )
        self._update_hard_state = (
            update(t.hard_state)
            .where(t.hard_state.c.node_id == bindparam("b_node"))
            .values(
                term=bindparam("b_term"),
                vote=bindparam("b_vote"),
                commit_index=bindparam("b_commit"),
            )
        )
        self._select_owner = (
            select(t.meta.c.value)
            .where(t.meta.c.node_id == bindparam("b_node"), t.meta.c.key == _OWNER_KEY)
            .with_for_update()
        )

    # -- the Storage protocol -----------------------------------------------------------------

    def describe(self) -> str:
        if self.sqlite_path is not None:
            return str(self.sqlite_path)
        return self.url.render_as_string(hide_password=True)

    @property
    def lock_path(self) -> Path | None:
        """SQLite's lock file: ``<file>.lock``, or ``<file>.<node_id>.lock`` when the file is
        not named after this node (several nodes sharing one file through a URL)."""
        path = self.sqlite_path
        if path is None:
            return None
        if path.name == f"{self.node_id}.sqlite3":
            return path.with_name(path.name + ".lock")
        return path.with_name(f"{path.name}.{self.node_id}.lock")

    def size_bytes(self) -> int | None:
        """SQLite: bytes of its files (:func:`sqlite_size`); None for a database server."""
        from .sqlite import sqlite_size

        return None if self.sqlite_path is None else sqlite_size(self.sqlite_path)

    def open(self) -> PersistedState:
        with self._mutex:
            if self._engine is not None:
                raise StorageError(
                    f"the storage of node {self.node_id!r} ({self.describe()}) is already "
                    "open; close it first"
                )
            engine = self._create_engine()
            ownership: Ownership | None = None
            connection: Connection | None = None
            try:
                with self._errors("open"):
                    ownership = self._acquire_ownership(engine)
                    self._create_schema(engine)
                    owner_value = self._claim(engine)
                    state = self._load(engine)
                    if self.is_sqlite:
                        connection = engine.connect()
                check_loaded(state, self.describe(), self.node_id, self._recovery())
            except BaseException:
                if connection is not None:
                    connection.close()
                if ownership is not None:
                    ownership.release()
                engine.dispose()
                raise
            self._engine, self._ownership, self._owner_value = engine, ownership, owner_value
            self._recheck_ownership = False
            if not self.is_sqlite:
                event.listen(engine, "connect", self._on_new_connection)
            self._bounds = LogBounds.of(state)
            if connection is not None:
                self._sqlite_statements = SqliteStatements.compile(
                    self.tables.log, self._update_hard_state, engine
                )
                self._sqlite_connection = connection
            return state

    def persist(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        snapshot_replaces_log: bool,
        sync: bool = True,
    ) -> None:
        with self._mutex:
            engine = self._engine
            if engine is None:
                raise StorageError(
                    f"the storage of node {self.node_id!r} is not open; call open() first"
                )
            bounds = self._bounds.after(snapshot, entries, snapshot_replaces_log)
            t, node = self.tables, self.node_id
            with (
                self._errors("persist"),
                self._unsynced(not sync),
                self._transaction(engine) as conn,
            ):
                if self._recheck_ownership and self._ownership is not None:
                    self._ownership.ensure_held()
                    self._recheck_ownership = False
                self._check_owner(conn)
                if not sync and self.is_postgresql:
                    # Committed in the server's memory, flushed by its WAL writer moments later:
                    # it survives this process crashing, not the server losing power.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                if snapshot is not None:
                    meta = snapshot.meta
                    conn.execute(delete(t.snapshot).where(t.snapshot.c.node_id == node))
                    conn.execute(
                        insert(t.snapshot),
                        {
                            "node_id": node,
                            "idx": meta.index,
                            "term": meta.term,
                            "membership": json.dumps(membership_to_dict(meta.membership)),
                            "data": snapshot.data,
                        },
                    )
                    compacted = delete(t.log).where(t.log.c.node_id == node)
                    if not snapshot_replaces_log:
                        compacted = compacted.where(t.log.c.idx <= meta.index)
                    conn.execute(compacted)
                if entries:
                    first = entries[0].index
                    if (
                        snapshot is not None
                        or first <= self._bounds.last_index
                        or self._outcome_unknown
                    ):
                        conn.execute(self._delete_from, {"b_node": node, "b_first": first})
                    fast = self._sqlite_statements
                    for batch in _batches(node, entries):
                        if fast is not None:
                            fast.insert_entries(conn, batch)
                        else:
                            conn.execute(insert(t.log), batch)
                if hard_state is not None:
                    fast = self._sqlite_statements
                    if fast is None or not fast.update_hard_state(conn, node, hard_state):
                        self._write_hard_state(conn, hard_state)
            self._bounds = bounds
            self._outcome_unknown = False
            if snapshot is not None and self._sqlite_connection is not None:
                give_back_space(driver_connection(self._sqlite_connection))

    @contextmanager
    def _unsynced(self, unsynced: bool) -> Iterator[None]:
        """SQLite: commit without an fsync (``synchronous=NORMAL`` for this one transaction; in
        WAL mode the commit is in the -wal file, which survives a process crash, and the next
        synced commit flushes it). SQLite refuses the pragma inside a transaction, hence around
        it. PostgreSQL does it inside the transaction (``SET LOCAL``); MySQL and MariaDB have no
        per-transaction setting, so there the write costs what any commit costs."""
        connection = self._sqlite_connection
        if not unsynced or connection is None or self.sqlite_synchronous != "FULL":
            yield
            return
        driver = driver_connection(connection)
        driver.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            driver.execute("PRAGMA synchronous=FULL")

    def _transaction(self, engine: Engine) -> AbstractContextManager[Connection]:
        """A write transaction: on SQLite, on the connection kept open for the storage's
        lifetime (checking a connection out of the pool and back for every persist was a
        third of a persist's CPU); elsewhere on a pooled connection, as usual."""
        connection = self._sqlite_connection
        if connection is None:
            return engine.begin()
        return begun(connection)

    def _on_new_connection(self, *_: object) -> None:
        # The pool replaces dead connections (pool_pre_ping) at checkout: after a server
        # restart the first persist makes a new one, and checks the lock before it writes.
        self._recheck_ownership = True

    def close(self) -> None:
        with self._mutex:
            connection, self._sqlite_connection = self._sqlite_connection, None
            if connection is not None:
                connection.close()
            engine, self._engine = self._engine, None
            ownership, self._ownership = self._ownership, None
            self._owner_seen = None
            if ownership is not None:
                ownership.release()
            if engine is not None:
                engine.dispose()

    # -- opening ------------------------------------------------------------------------------

    def _create_engine(self) -> Engine:
        options: dict[str, Any] = {}
        if self.is_sqlite:
            # One writer per file (the node's loop): one pooled connection is all it needs.
            options.update(pool_size=1, max_overflow=0)
        else:
            # The ownership lock keeps one connection checked out for the node's life.
            options.update(pool_pre_ping=True, pool_size=2, max_overflow=2)
        options.update(self._engine_options)
        try:
            engine = create_engine(self.url, **options)
        except (ImportError, NoSuchModuleError) as exc:
            extra = "postgres" if self.url.get_backend_name() == "postgresql" else "mysql"
            raise StorageError(
                f"cannot use {self.describe()}: its database driver is not installed ({exc}); "
                f"install it with: pip install 'catga-sync[{extra}]'"
            ) from exc
        if self.is_sqlite:
            configure_sqlite(engine, self.sqlite_synchronous)
        return engine

    def _acquire_ownership(self, engine: Engine) -> Ownership:
        where = self.describe()
        if self.sqlite_path is not None and self.lock_path is not None:
            try:
                self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the state directory {self.sqlite_path.parent} of node "
                    f"{self.node_id!r}: {exc.strerror}; check the path and its permissions"
                ) from exc
            return FileOwnership.acquire(self.lock_path, node_id=self.node_id, where=where)
        return acquire_database_ownership(
            engine,
            node_id=self.node_id,
            table_prefix=self.table_prefix,
            where=f"{where} (tables {self.table_prefix}*)",
            owner_hint=lambda: self._read_owner(engine),
        )

    def _create_schema(self, engine: Engine) -> None:
        with engine.begin() as conn:
            if inspect(conn).has_table(self.tables.meta.name):
                self._check_schema_version(conn)
        # Another node sharing the database may create a table between our check and our
        # CREATE. Each retry skips the tables that exist by then, so it ends within one
        # attempt per table.
        attempts = len(self.tables.metadata.tables) + 1
        for attempt in range(attempts):
            try:
                self.tables.metadata.create_all(engine, checkfirst=True)
                return
            except SQLAlchemyError:
                if attempt == attempts - 1:
                    raise

    def _check_schema_version(self, conn: Connection) -> None:
        meta = self.tables.meta
        rows = conn.execute(
            select(meta.c.node_id, meta.c.value).where(meta.c.key == _SCHEMA_VERSION_KEY)
        ).all()
        for writer, value in rows:
            try:
                version = int(value)
            except ValueError:
                version = -1
            if 1 <= version <= SCHEMA_VERSION:
                continue
            found = f"schema version {version}" if version > 0 else f"an unknown schema {value!r}"
            raise StorageError(
                f"the tables {self.table_prefix}* in {self.describe()} hold {found} (written "
                f"for node {writer!r}), but catga_sync {__version__} supports schema version "
                f"{SCHEMA_VERSION} and older; upgrade catga_sync on this machine to the "
                "version that wrote them (or newer)"
            )

    def _claim(self, engine: Engine) -> str:
        """Record the schema version and this process as the owner; return the owner value."""
        meta, node = self.tables.meta, self.node_id
        owner = json.dumps({"token": uuid.uuid4().hex, **holder_record()}, sort_keys=True)
        with engine.begin() as conn:
            has_version = conn.execute(
                select(meta.c.value).where(
                    meta.c.node_id == node, meta.c.key == _SCHEMA_VERSION_KEY
                )
            ).first()
            if has_version is None:
                conn.execute(
                    insert(meta),
                    {"node_id": node, "key": _SCHEMA_VERSION_KEY, "value": str(SCHEMA_VERSION)},
                )
            conn.execute(delete(meta).where(meta.c.node_id == node, meta.c.key == _OWNER_KEY))
            conn.execute(insert(meta), {"node_id": node, "key": _OWNER_KEY, "value": owner})
        return owner

    def _read_owner(self, engine: Engine) -> str | None:
        meta = self.tables.meta
        with engine.connect() as conn:
            value = conn.execute(
                select(meta.c.value).where(meta.c.node_id == self.node_id, meta.c.key == _OWNER_KEY)
            ).scalar()
        if value == self._owner_value:
            return None  # still our row: the new holder has not claimed it yet
        record = json.loads(value) if value else None
        return describe_holder(record) if isinstance(record, dict) else None

    def _load(self, engine: Engine) -> PersistedState:
        t, node = self.tables, self.node_id
        with engine.connect() as conn:
            hard_row = conn.execute(
                select(t.hard_state.c.term, t.hard_state.c.vote, t.hard_state.c.commit_index).where(
                    t.hard_state.c.node_id == node
                )
            ).first()
            snap = t.snapshot.c
            snap_row = conn.execute(
                select(snap.idx, snap.term, snap.membership, snap.data).where(snap.node_id == node)
            ).first()
            log_rows = conn.execute(
                select(t.log.c.idx, t.log.c.term, t.log.c.type, t.log.c.data)
                .where(t.log.c.node_id == node)
                .order_by(t.log.c.idx)
            ).all()
        hard = HardState()
        if hard_row is not None:
            hard = HardState(int(hard_row.term), hard_row.vote, int(hard_row.commit_index))
        snapshot = None
        if snap_row is not None:
            try:
                membership = json.loads(snap_row.membership)
                meta = snapshot_meta_from_dict(
                    {"index": int(snap_row.idx), "term": int(snap_row.term), **membership}
                )
            except (ValueError, TypeError, InvalidMessageError) as exc:
                raise self._damaged(f"its snapshot's membership is unreadable ({exc})") from None
            snapshot = Snapshot(meta, bytes(snap_row.data))
        entries = []
        for row in log_rows:
            try:
                kind = EntryType(row.type)
            except ValueError:
                raise self._damaged(f"entry {row.idx} has an unknown type {row.type!r}") from None
            entries.append(Entry(int(row.idx), int(row.term), bytes(row.data), kind))
        return PersistedState(hard, snapshot, tuple(entries))

    # -- persisting ---------------------------------------------------------------------------

    def _write_hard_state(self, conn: Connection, hard_state: HardState) -> None:
        values = {
            "b_node": self.node_id,
            "b_term": hard_state.term,
            "b_vote": hard_state.vote,
            "b_commit": hard_state.commit,
        }
        if conn.execute(self._update_hard_state, values).rowcount == 1:
            return
        # No row yet (or MySQL, which counts only changed rows, saw the same values): replace.
        t = self.tables
        conn.execute(delete(t.hard_state).where(t.hard_state.c.node_id == self.node_id))
        conn.execute(
            insert(t.hard_state),
            {
                "node_id": self.node_id,
                "term": hard_state.term,
                "vote": hard_state.vote,
                "commit_index": hard_state.commit,
            },
        )

    def _check_owner(self, conn: Connection) -> None:
        """Refuse to write when another process has claimed the node's state since we did."""
        seen: tuple[Any, int] | None = None
        if self.is_sqlite:
            # Inside BEGIN IMMEDIATE we hold the write lock: nobody commits before we do.
            dbapi = conn.connection.dbapi_connection
            row = dbapi.execute("PRAGMA data_version").fetchone() if dbapi else None
            if dbapi is not None and row is not None:
                seen = (dbapi, int(row[0]))
                last = self._owner_seen
                if last is not None and last[0] is dbapi and last[1] == seen[1]:
                    return  # no other connection wrote to the file since the owner row was ours
        current = conn.execute(self._select_owner, {"b_node": self.node_id}).scalar()
        if current == self._owner_value:
            self._owner_seen = seen
            return
        holder = "nobody"
        try:
            record = json.loads(current) if current else None
            if isinstance(record, dict):
                holder = describe_holder(record)
        except ValueError:
            pass
        raise StorageError(
            f"node {self.node_id!r} no longer owns its state in {self.describe()}: it is now "
            f"claimed by {holder}. Its ownership lock was lost (a dropped database session "
            "or a deleted lock file) and another process took over. Nothing was written; "
            "stop this process"
        )

    # -- errors -------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn driver and SQLAlchemy errors into a :class:`StorageError` that says what to do."""
        try:
            yield
        except StorageError:
            raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if self.is_sqlite and _is_damage(exc):
                raise self._damaged(detail) from exc
            if doing == "persist" and not self.is_sqlite and _is_unreachable(exc):
                self._recheck_ownership = True
                self._outcome_unknown = True
                raise StorageUnavailableError(
                    f"could not persist the Raft state of node {self.node_id!r} in "
                    f"{self.describe()}: the database is unreachable ({detail}); nothing was "
                    "acknowledged, and the node retries the same write until it is back"
                ) from exc
            if doing == "open":
                advice = (
                    "check that the database is running and reachable, that the URL's user, "
                    "password and database are right, and that the user may create tables"
                )
            else:
                advice = (
                    "the transaction was rolled back (or its outcome is unknown if the "
                    "connection broke while committing); check that the database is reachable "
                    "and has free space, then restart the node"
                )
            raise StorageError(
                f"could not {doing} the Raft state of node {self.node_id!r} in "
                f"{self.describe()}: {detail}; {advice}"
            ) from exc

    def _damaged(self, detail: str) -> StorageError:
        return StorageError(
            f"the Raft state of node {self.node_id!r} in {self.describe()} is damaged: "
            f"{detail}.\n{self._recovery()}"
        )

    def _recovery(self) -> str:
        path = self.sqlite_path
        if path is not None:
            shared = path.name != f"{self.node_id}.sqlite3"
            what = f"this node's state file {path}"
            delete_how = f"rm {path} {path}-wal {path}-shm"
            if shared:
                delete_how += " (the file is shared: the nodes it also holds must resync too)"
            return recovery_steps(what, delete_how)
        p = self.table_prefix
        what = (
            f"this node's rows (node_id = {self.node_id!r}) in the tables {p}meta, "
            f"{p}hard_state, {p}log and {p}snapshot of {self.describe()}"
        )
        node = self.node_id.replace("'", "''")
        delete_how = "; ".join(
            f"DELETE FROM {p}{name} WHERE node_id = '{node}'"
            for name in ("log", "snapshot", "hard_state", "meta")
        )
        return recovery_steps(what, delete_how)


def _is_unreachable(exc: BaseException) -> bool:
    """A database server that is down, restarting or cut off, as opposed to one that refused
    the write (a constraint, a full disk on SQLite): the connection broke, or could not be
    made. A client-server database keeps what it committed; the write may simply be retried."""
    if getattr(exc, "connection_invalidated", False):
        return True
    if _is_server_out_of_space(exc):
        return False  # reachable, and refusing: waiting would hide a full disk forever
    return isinstance(exc, (OperationalError, InterfaceError))


_POSTGRES_OUT_OF_SPACE = frozenset({"53100"})  # disk_full
_MYSQL_OUT_OF_SPACE = frozenset({1021, 1114})  # ER_DISK_FULL, ER_RECORD_FILE_FULL


def _is_server_out_of_space(exc: BaseException) -> bool:
    """The server answered that it has no room to write: an error to stop on and name, as a
    full disk under SQLite is, not a server to wait for (its connection errors are)."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) in _POSTGRES_OUT_OF_SPACE:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _MYSQL_OUT_OF_SPACE


def _is_damage(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    if not isinstance(orig, sqlite3.DatabaseError):
        return False
    text = str(orig).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _batches(node_id: str, entries: Sequence[Entry]) -> Iterator[list[dict[str, object]]]:
    """Rows for executemany, in batches bounded by count and bytes."""
    batch: list[dict[str, object]] = []
    size = 0
    for entry in entries:
        batch.append(
            {
                "node_id": node_id,
                "idx": entry.index,
                "term": entry.term,
                "type": entry.type.value,
                "data": entry.data,
            }
        )
        size += entry.size
        if len(batch) >= _BATCH_ROWS or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
