"""A PostgreSQL server restarted under three running nodes that keep their state in it.

The test starts a throwaway server of its own (``servers.py``), so restarting it disturbs
nothing else. Before the fix, one fast restart (about 3 s down) stopped every node for good
(each logged "Raft loop failed, node stopped"); now each waits for the database, acknowledging
nothing meanwhile, goes on, and holds its ownership lock again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers import PostgresServer, Server, restart_under_three_nodes, throwaway


@pytest.fixture
def server() -> Iterator[Server]:
    with throwaway(PostgresServer) as made:
        yield made


def test_postgres_restarted_under_three_nodes_stops_none_and_loses_nothing(
    server: Server,
) -> None:
    restart_under_three_nodes(server, "pg", print)
