"""The fencing helpers against real databases: SQLite, and the PostgreSQL and MySQL servers
of ``tox -e postgres`` / ``tox -e mysql`` (``CATGA_TEST_POSTGRES_URL``, ``CATGA_TEST_MYSQL_URL``).
A write carrying an older fencing token than the row's is refused and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select

from catga_sync.errors import InvalidLockRequestError, StaleTokenError
from catga_sync.fencing import claim, fence_column, fenced_update

from .conftest import server_url


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fenced.sqlite3'}"
    else:
        url = server_url(request.param)
    made = create_engine(url)
    try:
        yield made
    finally:
        made.dispose()


def test_fenced_update_refuses_a_stale_token_on_a_real_database(engine: Any) -> None:
    metadata = MetaData()
    accounts = Table(
        f"accounts_{uuid.uuid4().hex[:8]}",
        metadata,
        Column("id", String(20), primary_key=True),
        Column("balance", Integer, nullable=False),
        fence_column(),
    )
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(accounts.insert().values(id="ada", balance=100, fence_token=None))
        with engine.begin() as conn:
            assert fenced_update(conn, accounts, {"id": "ada"}, {"balance": 90}, 7) == 1
        with engine.begin() as conn:  # the same holder writes again, the same values too
            assert fenced_update(conn, accounts, {"id": "ada"}, {"balance": 90}, 7) == 1
        with engine.begin() as conn:
            assert fenced_update(conn, accounts, accounts.c.id == "ada", {"balance": 80}, 12) == 1
        with (
            pytest.raises(StaleTokenError, match="token 7 refused, token 12 wrote"),
            engine.begin() as conn,
        ):
            fenced_update(conn, accounts, {"id": "ada"}, {"balance": 0}, 7)
        with engine.begin() as conn:  # a newer holder claims the row before reading it
            assert claim(conn, accounts, {"id": "ada"}, 13) == 1
            assert conn.execute(select(accounts.c.balance)).scalar() == 80
        with pytest.raises(StaleTokenError), engine.begin() as conn:
            fenced_update(conn, accounts, {"id": "ada"}, {"balance": 0}, 12)
        with engine.begin() as conn:
            assert fenced_update(conn, accounts, {"id": "nobody"}, {"balance": 1}, 50) == 0
            row = conn.execute(select(accounts.c.balance, accounts.c.fence_token)).one()
        assert tuple(row) == (80, 13)  # the stale writes changed nothing
        with engine.begin() as conn, pytest.raises(InvalidLockRequestError):
            fenced_update(conn, accounts, {"id": "ada"}, {"balance": 1}, -1)
    finally:
        metadata.drop_all(engine)
