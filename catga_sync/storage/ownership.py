"""One process per node: the ownership lock a storage takes in ``open()`` and drops in ``close()``.

Two processes driving the same node's state would each vote and append as if alone, which
breaks Raft's safety. So the state is locked, the way its backend allows:

- SQLite: ``fcntl.flock`` on a lock file beside the database (``<file>.lock``), which holds the
  holder's pid, host and start time as JSON. The kernel drops the lock when the process dies, so
  a lock file left behind is harmless; never delete it while a node runs.
- PostgreSQL: a session advisory lock, ``pg_try_advisory_lock(key)``, with a stable 64-bit key
  derived from (table prefix, node id), held on a dedicated connection for the node's life.
- MySQL and MariaDB: ``GET_LOCK(name, 0)`` on a dedicated connection; the name (at most 64
  characters) is derived from (database, table prefix, node id), since MySQL's lock names are
  server-wide.

A second process fails at once with :class:`~catga_sync.errors.StorageError` naming the holder.
A server restart ends the session, and its lock with it: the storage then calls
:meth:`Ownership.ensure_held` before its next write, which takes the lock again on a new session
or, if another process took it meanwhile, refuses (the node stops rather than write).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StorageError

__all__ = [
    "FileOwnership",
    "MySqlOwnership",
    "Ownership",
    "PostgresOwnership",
    "acquire_database_ownership",
    "already_running",
    "describe_holder",
    "holder_record",
    "mysql_lock_name",
    "postgres_lock_key",
]


class Ownership(Protocol):
    """A held ownership lock."""

    def ensure_held(self) -> None:
        """Check that the lock is still held, taking it again if it went with a database
        session; raise :class:`StorageError` if another process holds it now."""
        ...

    def release(self) -> None:
        """Drop the lock. Idempotent; never raises."""
        ...


def holder_record() -> dict[str, object]:
    """Who takes a lock: this process's pid, host and the time it took it (UTC)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def describe_holder(record: Mapping[str, object]) -> str:
    """``pid 123 on host web1, started 2026-01-01T00:00:00+00:00``."""
    out = f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"
    if record.get("started"):
        out += f", started {record['started']}"
    return out


def already_running(node_id: str, where: str, holder: str) -> StorageError:
    """The error a second process gets when it tries to run a node that is already running."""
    return StorageError(
        f"node {node_id!r} is already running: its state {where} is locked by {holder}; "
        "stop that process first, or give this one another node id"
    )


# --------------------------------------------------------------------------------------------
# SQLite: a lock file


class FileOwnership:
    """An exclusive ``flock`` on ``<database>.lock``, holding this process's holder record."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, *, node_id: str, where: str) -> FileOwnership:
        """Lock ``path`` (created if missing) or raise :class:`StorageError` naming the holder."""
        try:
            # os.open makes the descriptor non-inheritable, so a child process started with
            # subprocess does not keep the lock alive after we exit.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot create the lock file {path} of node {node_id!r}: {exc.strerror}; "
                "check that the state directory exists and this user may write to it"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            held = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            holder = _read_holder(fd) if held else ""
            os.close(fd)
            if held:
                raise already_running(node_id, where, holder) from None
            raise StorageError(
                f"cannot lock {path} for node {node_id!r}: {exc.strerror}; the state directory "
                "must be on a local file system that supports flock (not NFS or SMB)"
            ) from exc
        try:
            data = json.dumps({**holder_record(), "node_id": node_id}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                f"cannot write the lock file {path} of node {node_id!r}: {exc.strerror}; "
                "check free disk space and permissions"
            ) from exc
        return cls(path, fd)

    def ensure_held(self) -> None:
        """A flock lasts as long as this process and its descriptor: nothing to take again."""

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the descriptor drops the flock. The file stays: deleting it would let a
            # process that opened the old file and one that creates a new one both "hold" it.
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        record = json.loads(raw)
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return "another process (it has not written its pid yet; try again in a moment)"
    return describe_holder(record)


# --------------------------------------------------------------------------------------------
# Database servers: a session lock on a dedicated connection


def postgres_lock_key(table_prefix: str, node_id: str) -> int:
    """The advisory lock key of a node's state: a signed 64-bit integer, stable everywhere.

    PostgreSQL's advisory locks are per database, so (prefix, node id) is enough.
    """
    digest = hashlib.blake2b(
        f"catga_sync\0{table_prefix}\0{node_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def mysql_lock_name(database: str, table_prefix: str, node_id: str) -> str:
    """The ``GET_LOCK`` name of a node's state, at most 64 characters.

    MySQL's named locks are server-wide, so the database takes part in the name.
    """
    digest = hashlib.blake2b(
        f"{database}\0{table_prefix}\0{node_id}".encode(), digest_size=20
    ).hexdigest()
    return f"catga_sync:{digest}"


_Session = TypeVar("_Session", bound="_SessionOwnership")


class _SessionOwnership:
    """A lock that lives as long as one database session: closing the session drops it.

    So does the server ending the session (a restart, a failover, an administrator's kill):
    :meth:`ensure_held` then takes the lock again on a new session, unless another process
    took it first. Subclasses say how to take and release the lock (:meth:`_take`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        node_id: str,
        table_prefix: str,
        where: str,
        owner_hint: Callable[[], str | None],
    ) -> None:
        self._engine = engine
        self.node_id = node_id
        self.table_prefix = table_prefix
        self.where = where
        self._owner_hint = owner_hint
        self._conn: Connection | None = None
        self._released = False

    @classmethod
    def acquire(
        cls: type[_Session],
        engine: Engine,
        *,
        node_id: str,
        table_prefix: str,
        where: str,
        owner_hint: Callable[[], str | None],
    ) -> _Session:
        """Take the lock on a new session, or raise :class:`StorageError` naming the holder."""
        ownership = cls(
            engine, node_id=node_id, table_prefix=table_prefix, where=where, owner_hint=owner_hint
        )
        holder = ownership._take_on_new_session()
        if holder is not None:
            raise already_running(node_id, where, holder)
        return ownership

    def ensure_held(self) -> None:
        """Make sure the lock is still ours: a session that still answers still holds it
        (only its end drops a session lock); a dead one is replaced and the lock taken again.
        Raises :class:`StorageError` if another process took the lock meanwhile, and the
        driver's error (through SQLAlchemy) while the database cannot be reached."""
        if self._released:
            raise StorageError(f"the ownership lock of node {self.node_id!r} was released")
        conn = self._conn
        if conn is not None:
            try:
                conn.execute(text("SELECT 1"))
                return
            except SQLAlchemyError:
                self._conn = None
                _discard(conn)
        holder = self._take_on_new_session()
        if holder is not None:
            raise StorageError(
                f"node {self.node_id!r} lost its ownership lock on its state {self.where} when "
                f"its database session ended (a database restart, a failover, a killed "
                f"session), and another process took it meanwhile: it is now locked by "
                f"{holder}. Nothing more was written; this node stops. Stop one of the two "
                "processes: only one may run this node"
            )

    def release(self) -> None:
        self._released = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # The session may be gone already, and the lock with it.
        with contextlib.suppress(Exception):
            self._unlock(conn)
        _discard(conn)

    def _take_on_new_session(self) -> str | None:
        """Open a session and take the lock on it: None once held, else who holds it."""
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            holder = self._take(conn)
        except BaseException:
            _discard(conn)
            raise
        if holder is not None:
            _discard(conn)
            return holder
        self._conn = conn
        return None

    def _take(self, conn: Connection) -> str | None:
        """Prepare the session and try the lock once: None when taken, else the holder."""
        raise NotImplementedError

    def _unlock(self, conn: Connection) -> None:
        raise NotImplementedError


def _discard(conn: Connection) -> None:
    # Never hand a lock's session back to the pool: its settings were changed for the lock.
    with contextlib.suppress(Exception):
        conn.invalidate()
        conn.close()


class PostgresOwnership(_SessionOwnership):
    def _take(self, conn: Connection) -> str | None:
        key = postgres_lock_key(self.table_prefix, self.node_id)
        record = holder_record()
        name = f"catga_sync {self.node_id} pid {record['pid']}@{record['host']}"
        conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name})
        version = self._engine.dialect.server_version_info or (0,)
        if version >= (14,):
            # An idle session timeout set by the administrator would drop the lock.
            conn.execute(text("SELECT set_config('idle_session_timeout', '0', false)"))
        if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            return None
        return _postgres_holder(conn, key, self._owner_hint)

    def _unlock(self, conn: Connection) -> None:
        key = postgres_lock_key(self.table_prefix, self.node_id)
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def _postgres_holder(conn: Connection, key: int, owner_hint: Callable[[], str | None]) -> str:
    unsigned = key % (1 << 64)
    row = None
    # The holder's details are a courtesy; the refusal stands without them.
    with contextlib.suppress(Exception):
        row = conn.execute(
            text(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
                "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid::bigint = :hi AND l.objid::bigint = :lo "
                "AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())"
            ),
            {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
        ).first()
    session = "another PostgreSQL session"
    if row is not None:
        session = f"PostgreSQL session pid {row.pid}"
        if row.application_name:
            session += f" ({row.application_name!s}"
            session += f", client {row.client_addr})" if row.client_addr else ")"
    return _with_hint(session, owner_hint)


class MySqlOwnership(_SessionOwnership):
    _name = ""

    def _take(self, conn: Connection) -> str | None:
        database = conn.execute(text("SELECT DATABASE()")).scalar() or ""
        self._name = mysql_lock_name(str(database), self.table_prefix, self.node_id)
        # The server closes sessions idle for wait_timeout (8 hours by default), and the
        # lock with them; this session is idle by design, so ask for the maximum (1 year).
        conn.execute(text("SET SESSION wait_timeout = 31536000"))
        if conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self._name}).scalar() == 1:
            return None
        return _mysql_holder(conn, self._name, self._owner_hint)

    def _unlock(self, conn: Connection) -> None:
        conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self._name})


def _mysql_holder(conn: Connection, name: str, owner_hint: Callable[[], str | None]) -> str:
    session = "another MySQL session"
    try:
        holder_id = conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar()
        if holder_id is not None:
            session = f"MySQL connection id {holder_id}"
            row = conn.execute(
                text("SELECT USER, HOST FROM information_schema.PROCESSLIST WHERE ID = :i"),
                {"i": holder_id},
            ).first()
            if row is not None:
                session += f" (user {row.USER} from {row.HOST})"
    except Exception:
        pass  # as for PostgreSQL: the details are a courtesy
    return _with_hint(session, owner_hint)


def _with_hint(session: str, owner_hint: Callable[[], str | None]) -> str:
    try:
        owner = owner_hint()
    except Exception:
        owner = None
    return f"{owner} through {session}" if owner else session


def acquire_database_ownership(
    engine: Engine,
    *,
    node_id: str,
    table_prefix: str,
    where: str,
    owner_hint: Callable[[], str | None],
) -> Ownership:
    """Take the session lock that fits ``engine``'s database, or raise :class:`StorageError`."""
    name = engine.dialect.name
    if name == "postgresql":
        return PostgresOwnership.acquire(
            engine, node_id=node_id, table_prefix=table_prefix, where=where, owner_hint=owner_hint
        )
    if name in ("mysql", "mariadb"):
        return MySqlOwnership.acquire(
            engine, node_id=node_id, table_prefix=table_prefix, where=where, owner_hint=owner_hint
        )
    raise StorageError(
        f"catga_sync cannot lock node state in a {name} database ({where}): it supports "
        "SQLite, PostgreSQL and MySQL/MariaDB; use one of those"
    )
