"""Fencing: the resource a lock protects refuses writes from a holder that lost the lock.

A lease cannot protect against its own holder pausing: a process stopped for longer than the
TTL (a GC pause, a swapped-out VM, ``SIGSTOP``) wakes up believing it still holds the lock, and
writes after another holder did. So every grant carries a fencing token (the log index of the
grant, always increasing), the holder passes it along with each write, and the resource keeps
the newest token it has seen and refuses older ones. See ``docs/locks.rst`` for the recipe.

- :func:`fenced_update` — for a SQL table with a token column, through SQLAlchemy Core
  (SQLite, PostgreSQL, MySQL/MariaDB): ``UPDATE ... SET ..., fence_token = :token WHERE ...
  AND (fence_token IS NULL OR fence_token <= :token)``, and :class:`StaleTokenError` when the
  row is there but a newer token wrote it.
- :func:`claim` — the same with no values: raise the row's token to yours before you read it,
  in the transaction that then writes it, so that an older holder cannot write in between.
- :class:`FencedResource` — the same rules for an in-memory map (tests, examples).

A token on writes alone does not make a read-modify-write safe: an old holder's write could land
after the new holder *read* and before it wrote, and be accepted (the new token was not there
yet). Either do the whole change in one statement (``SET balance = balance - 10``), or claim the
row with your token first, then read, then write, in one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import BigInteger, Column, ColumnElement, Connection, Table, and_, func, or_
from sqlalchemy import select as sql_select
from sqlalchemy import update as sql_update

from .errors import InvalidLockRequestError, StaleTokenError

DEFAULT_COLUMN = "fence_token"

__all__ = ["DEFAULT_COLUMN", "FencedResource", "claim", "fence_column", "fenced_update"]


def fence_column(name: str = DEFAULT_COLUMN) -> Column[int]:
    """The token column to add to a fenced table: ``BIGINT NULL`` (NULL: never written under a
    lock). Existing table: ``ALTER TABLE t ADD COLUMN fence_token BIGINT NULL``."""
    return Column(name, BigInteger, nullable=True)


def fenced_update(
    conn: Connection,
    table: Table,
    where: Mapping[str, Any] | ColumnElement[bool],
    values: Mapping[str, Any],
    token: int,
    *,
    column: str = DEFAULT_COLUMN,
) -> int:
    """Update the rows of ``table`` matching ``where`` with ``values``, unless a holder with a
    newer token than ``token`` has written them; stores ``token`` in ``column``.

    ``where`` is ``{"column": value, ...}`` or a SQLAlchemy condition. Returns the number of
    rows updated (0: no row matches ``where``). Raises
    :class:`~catga_sync.errors.StaleTokenError` when rows match but carry a newer token:
    nothing was written, and this holder's lease is gone. Run it in the transaction that
    does the rest of the work, so that it all commits or none does.
    """
    _check_token(token)
    fence = table.c[column]
    match = _condition(table, where)
    statement = (
        sql_update(table)
        .where(match, or_(fence.is_(None), fence <= token))
        .values({**values, column: token})
    )
    updated = conn.execute(statement).rowcount
    if updated:
        return int(updated)
    # Nothing updated: no such row, or a newer token holds it (or, on MySQL, which counts
    # changed rows only, the same holder wrote the same values again).
    count, newest = conn.execute(sql_select(func.count(), func.max(fence)).where(match)).one()
    if count and newest is not None and newest > token:
        raise StaleTokenError(
            f"{table.name}: write with fencing token {token} refused, token {newest} wrote "
            "since: this holder's lease was lost. Acquire the lock again and redo the work"
        )
    return int(count)


def claim(
    conn: Connection,
    table: Table,
    where: Mapping[str, Any] | ColumnElement[bool],
    token: int,
    *,
    column: str = DEFAULT_COLUMN,
) -> int:
    """Stamp the rows matching ``where`` with ``token`` (no other change) unless a newer token
    did: do it first in the transaction that reads and then writes them. On PostgreSQL and
    MySQL the rows stay locked until that transaction ends. Same results as
    :func:`fenced_update`."""
    return fenced_update(conn, table, where, {}, token, column=column)


def _condition(table: Table, where: Mapping[str, Any] | ColumnElement[bool]) -> Any:
    if isinstance(where, Mapping):
        if not where:
            raise ValueError("a fenced update needs a WHERE: {column: value, ...}")
        return and_(*(table.c[key] == value for key, value in where.items()))
    return where


def _check_token(token: object) -> None:
    if not isinstance(token, int) or isinstance(token, bool) or token <= 0:
        raise InvalidLockRequestError(
            f"a fencing token is a positive integer (Lease.token), not {token!r}"
        )


class FencedResource:
    """A thread-safe in-memory map whose keys each remember the newest fencing token that
    touched them, and refuse older ones (the rules of :func:`fenced_update` and
    :func:`claim`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._tokens: dict[str, int] = {}
        self.accepted: list[int] = []
        """The token of every accepted write, in the order they were accepted."""
        self.refused: list[int] = []
        """The token of every refused read or write."""

    def write(self, key: str, value: Any, token: int) -> None:
        """Store ``value`` under ``key`` unless a newer token touched ``key``: StaleTokenError."""
        with self._lock:
            self._admit(key, token)
            self._values[key] = value
            self.accepted.append(token)

    def _admit(self, key: str, token: int) -> None:
        _check_token(token)
        newest = self._tokens.get(key)
        if newest is not None and newest > token:
            self.refused.append(token)
            raise StaleTokenError(
                f"{key!r}: fencing token {token} refused, token {newest} wrote since: this "
                "holder's lease was lost"
            )
        self._tokens[key] = token

    def read(self, key: str, default: Any = None, *, token: int | None = None) -> Any:
        """The value under ``key``. With ``token``, a fenced read: refused (StaleTokenError) if
        a newer token touched ``key``, and from now on refusing every older token — so that a
        read-modify-write under the lock cannot lose an old holder's late write."""
        with self._lock:
            if token is not None:
                self._admit(key, token)
            return self._values.get(key, default)

    def token(self, key: str) -> int | None:
        """The newest token that wrote ``key``, or None."""
        with self._lock:
            return self._tokens.get(key)
