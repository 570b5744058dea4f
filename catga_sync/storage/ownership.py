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
from typing import Protocol

from sqlalchemy import Connection, Engine, text

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
        "stop that process first, or give this one another node id "
        "(for gunicorn: run one worker per node, with threads)"
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


class _SessionOwnership:
    """A lock that lives as long as one database session: closing the session drops it."""

    def __init__(self, conn: Connection, unlock_sql: str, params: Mapping[str, object]) -> None:
        self._conn: Connection | None = conn
        self._unlock_sql = unlock_sql
        self._params = dict(params)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # The session may be gone already, and the lock with it.
        with contextlib.suppress(Exception):
            conn.execute(text(self._unlock_sql), self._params)
        # Never hand this session back to the pool: its settings were changed for the lock.
        with contextlib.suppress(Exception):
            conn.invalidate()
            conn.close()


class PostgresOwnership(_SessionOwnership):
    @classmethod
    def acquire(
        cls,
        engine: Engine,
        *,
        node_id: str,
        table_prefix: str,
        where: str,
        owner_hint: Callable[[], str | None],
    ) -> PostgresOwnership:
        key = postgres_lock_key(table_prefix, node_id)
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            record = holder_record()
            name = f"catga_sync {node_id} pid {record['pid']}@{record['host']}"
            conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name})
            version = engine.dialect.server_version_info or (0,)
            if version >= (14,):
                # An idle session timeout set by the administrator would drop the lock.
                conn.execute(text("SELECT set_config('idle_session_timeout', '0', false)"))
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if not got:
                holder = _postgres_holder(conn, key, owner_hint)
                raise already_running(node_id, where, holder)
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return cls(conn, "SELECT pg_advisory_unlock(:k)", {"k": key})


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
    @classmethod
    def acquire(
        cls,
        engine: Engine,
        *,
        node_id: str,
        table_prefix: str,
        where: str,
        owner_hint: Callable[[], str | None],
    ) -> MySqlOwnership:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            database = conn.execute(text("SELECT DATABASE()")).scalar() or ""
            name = mysql_lock_name(str(database), table_prefix, node_id)
            # The server closes sessions idle for wait_timeout (8 hours by default), and the
            # lock with them; this session is idle by design, so ask for the maximum (1 year).
            conn.execute(text("SET SESSION wait_timeout = 31536000"))
            got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar()
            if got != 1:
                holder = _mysql_holder(conn, name, owner_hint)
                raise already_running(node_id, where, holder)
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return cls(conn, "SELECT RELEASE_LOCK(:n)", {"n": name})


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
