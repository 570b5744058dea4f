"""Where a node keeps its Raft state: in memory, in a SQLite file per node, or in a SQL server.

:func:`open_storage` maps the guide's ``PersistentStatePath`` to a storage: unset means memory,
a directory means one SQLite file per node inside it, and a SQLAlchemy URL means that database.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL

from ..errors import ConfigError
from .base import Storage, persist_ready
from .memory import MemoryStorage
from .sql import DEFAULT_TABLE_PREFIX, SCHEMA_VERSION, SqlStorage, build_tables, sqlite_file_name

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "SCHEMA_VERSION",
    "MemoryStorage",
    "SqlStorage",
    "Storage",
    "build_tables",
    "open_storage",
    "persist_ready",
]


def open_storage(
    node_id: str,
    persistent_state_path: str | os.PathLike[str] | None,
    *,
    table_prefix: str = DEFAULT_TABLE_PREFIX,
    sqlite_synchronous: str = "FULL",
) -> Storage:
    """The storage for ``node_id`` that ``persistent_state_path`` asks for (not opened yet).

    - ``None``: :class:`MemoryStorage`; the state is lost when the process exits.
    - a string with ``://``: that SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``,
      ``mysql+pymysql://…``), the tables named with ``table_prefix``.
    - any other path: a directory (created at :meth:`~Storage.open` if missing) holding the
      SQLite file ``<node_id>.sqlite3`` and its lock file.

    ``sqlite_synchronous`` is ``"FULL"`` (durable against power loss) or ``"NORMAL"`` (faster;
    in WAL mode a power loss may drop the last transactions, but never corrupts the file).
    Raises :class:`~catga_sync.errors.ConfigError` for a value it cannot use.
    """
    if persistent_state_path is None:
        return MemoryStorage(node_id)
    if isinstance(persistent_state_path, str) and "://" in persistent_state_path:
        return SqlStorage(
            node_id,
            persistent_state_path,
            table_prefix=table_prefix,
            sqlite_synchronous=sqlite_synchronous,
        )
    if not isinstance(persistent_state_path, (str, os.PathLike)):
        raise ConfigError(
            f"persistent_state_path must be a directory, a database URL or None, got "
            f"{persistent_state_path!r}"
        )
    if not os.fspath(persistent_state_path).strip():
        raise ConfigError(
            "persistent_state_path is empty; give a directory (e.g. ./raft-state), a database "
            "URL, or leave it unset for in-memory state"
        )
    directory = Path(persistent_state_path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"persistent_state_path {str(directory)!r} is a file, not a directory; give the "
            "directory to keep each node's <node_id>.sqlite3 in, or a sqlite:/// URL"
        )
    file = directory.resolve() / sqlite_file_name(node_id)
    return SqlStorage(
        node_id,
        # Built, not formatted: a path may hold characters that a URL string would misread.
        URL.create("sqlite", database=str(file)),
        table_prefix=table_prefix,
        sqlite_synchronous=sqlite_synchronous,
    )
