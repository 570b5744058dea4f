"""Processes outside the cluster, through ``catga_sync.client.ClusterClient``.

Run it: ``python docs/examples/cluster_client.py`` (a few seconds). It starts a three-node
cluster in this process (each node serving its endpoint on a loopback port, with a client
token), then plays three programs that are not members of it:

- a **cron script** that runs a nightly report once a night, whichever host's cron fires
  first (it records the date under the lock, so a later run that gets the lock again does
  nothing), and writes its result to a SQL table under the lock's fencing token;
- a **Celery task** that runs under a lease (the pattern: a decorator around the task body;
  Celery itself is not needed to run the example);
- a **service watching the leader**, which hears of a leadership change.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Callable
from datetime import date, timedelta
from functools import wraps
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, select

from catga_sync.client import ClientStatus, ClusterClient
from catga_sync.config import ClusterConfig
from catga_sync.fencing import claim, fence_column, fenced_update
from catga_sync.kv import ReplicatedDict
from catga_sync.locks import Lease
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage

TOKEN = "example-client-token-change-me-0123456789"  # the nodes' ClientToken

metadata = MetaData()
reports = Table(
    "reports",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("status", String(20), nullable=False),
    fence_column(),
)


# -- 1. a cron script ------------------------------------------------------------------------


def nightly_report(cluster: ClusterClient, engine: Engine, night: date) -> bool:
    """``0 2 * * * python nightly_report.py`` on every host: one of them runs the report of
    ``night``. True if this run made it."""
    lease = cluster.try_acquire("nightly-report", ttl=60, owner=socket.gethostname())
    if lease is None:
        print("cron: another host holds nightly-report; nothing to do")
        return False
    with lease:  # released at the end of the block: a later run may get the lock again
        # The lock says "one at a time", not "once": record the night under it, so that a
        # host whose cron fires after the report was made (late, or a retry) does nothing.
        fired = cluster.dict().compare_and_set(f"report:{night}", None, lease.token)
        if not fired:
            print(f"cron: the report of {night} was already made; nothing to do")
            return False
        print(f"cron: running the report of {night} under fencing token {lease.token}")
        with engine.begin() as conn:
            claim(conn, reports, {"id": "nightly"}, lease.token)  # older tokens now refused
            fenced_update(conn, reports, {"id": "nightly"}, {"status": "done"}, lease.token)
    return True


# -- 2. a Celery task under a lease ------------------------------------------------------------


def under_lease(
    cluster: ClusterClient, name: str, *, ttl: float = 30
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated task only while holding lock ``name``: one run at a time across
    all workers; the task gets the lease to check before each step and to fence its writes.

    With Celery::

        @celery_app.task(bind=True, max_retries=None)
        @under_lease(cluster, "sync-invoices", ttl=30)
        def sync_invoices(lease, batch): ...
    """

    def decorate(task: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            with cluster.lock(name, ttl=ttl, timeout=timedelta(seconds=10)) as lease:
                lease.on_lost(lambda lost: print(f"task: lease lost ({lost.lost_reason})"))
                return task(lease, *args, **kwargs)

        return run

    return decorate


def make_task(cluster: ClusterClient) -> Callable[..., int]:
    @under_lease(cluster, "sync-invoices", ttl=30)
    def sync_invoices(lease: Lease, batch: list[str]) -> int:
        done: list[str] = []
        for invoice in batch:
            if not lease.is_valid():  # lost it (a long pause, a partition): stop here
                break
            done.append(invoice)  # ... write the invoice with fence=lease.token ...
        print(f"task: synced {len(done)} invoices under token {lease.token}")
        return len(done)

    return sync_invoices


# -- 3. a service watching the leader ----------------------------------------------------------


def watch_the_leader(cluster: ClusterClient, changed: threading.Event) -> Callable[[], None]:
    """Route writes to the leader's region, say: the callback runs at once with the current
    status, then on every change of leader or term (a long poll, no busy loop). ``changed``
    is set once a leader of a later term than the first callback's is seen."""
    first: list[int] = []

    def on_change(status: ClientStatus) -> None:
        print(f"watch: leader {status.leader_id or 'none'} in term {status.term}")
        if not first:
            first.append(status.term)
        elif status.term > first[0] and status.leader_id is not None:
            changed.set()

    watch = cluster.watch_leadership(on_change)
    return watch.stop


# ------------------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def main() -> None:
    endpoints = [f"http://127.0.0.1:{port}" for port in free_ports(3)]
    nodes = [
        ClusterNode(
            ClusterConfig(
                local_node_endpoint=endpoint,
                members=tuple(endpoints),
                node_id=f"node{k}",
                client_token=TOKEN,
            ),
            storage=MemoryStorage(f"node{k}"),
        )
        for k, endpoint in enumerate(endpoints)
    ]
    for node in nodes:
        node.register(ReplicatedDict())  # the cron script's record of the nights it ran
        node.start()
    try:
        with tempfile.TemporaryDirectory(prefix="catga-client-") as state:
            engine = create_engine(f"sqlite:///{Path(state) / 'reports.sqlite3'}")
            metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(reports.insert().values(id="nightly", status="pending"))
            run(endpoints, nodes, engine)
            engine.dispose()
    finally:
        for node in nodes:
            node.stop(transfer=False)


def run(endpoints: list[str], nodes: list[ClusterNode], engine: Engine) -> None:
    with ClusterClient(endpoints, secret=TOKEN, timeout=10) as cluster:
        leader = cluster.wait_for_leader(10)
        print(f"the leader is {leader}")

        night = date.today()
        assert nightly_report(cluster, engine, night)
        assert not nightly_report(cluster, engine, night)  # a second run that night: no-op
        with engine.begin() as conn:
            row = conn.execute(select(reports.c.status, reports.c.fence_token)).one()
        print(f"reports: {row.status}, written with token {row.fence_token}")

        assert make_task(cluster)(["inv-1", "inv-2", "inv-3"]) == 3

        changed = threading.Event()
        stop = watch_the_leader(cluster, changed)
        for _ in range(10):  # a transfer that stalls (a busy machine) is abandoned: ask again
            leading = [n for n in nodes if n.status.is_leader]
            if leading:
                leading[0].transfer_leadership()  # what a rolling restart does
            if changed.wait(2):
                break
        assert changed.is_set(), "the watch saw no change"
        stop()


if __name__ == "__main__":
    main()
