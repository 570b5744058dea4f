"""A MariaDB server restarted under three running nodes that keep their state in it.

The same story as ``test_postgres_restart.py``, on a throwaway MariaDB server of the test's own
(``servers.py``): stopped with SIGTERM for about 2 s and started again on the same port and
data directory. Every node waits for it, acknowledging nothing meanwhile, goes on, and holds
its ``GET_LOCK`` ownership lock again; nothing acknowledged is lost. Runs in ``tox -e mysql``
(the ``mysql`` in its name); skipped when the MariaDB binaries or PyMySQL are missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers import MariaDbServer, Server, restart_under_three_nodes, throwaway


@pytest.fixture
def server() -> Iterator[Server]:
    with throwaway(MariaDbServer) as made:
        yield made


def test_mysql_restarted_under_three_nodes_stops_none_and_loses_nothing(server: Server) -> None:
    restart_under_three_nodes(server, "my", print)
