"""Column types of the SQL storage that differ by database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import LargeBinary, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

__all__ = ["Blob"]


class Blob(TypeDecorator[bytes]):
    """A BLOB; LONGBLOB (4 GiB) on MySQL and MariaDB, whose BLOB holds 64 KiB, too little for
    entries and snapshots. Not ``with_variant``: that imports MySQL's dialect into every node
    (about 1 MiB for twenty modules a SQLite or PostgreSQL node never uses)."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.LONGBLOB())
        return dialect.type_descriptor(LargeBinary())
