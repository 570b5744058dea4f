"""A lock is not enough: a holder paused past its TTL writes late, and the fence refuses it.

Run it: ``python docs/examples/lock_fencing.py`` (about two seconds). Two workers debit one
account in a SQL table (SQLite here; the same code runs on PostgreSQL) under the lock
``"account:ada"``. The first stops for longer than its lease — as a process does in a long GC
pause, a swap storm or under ``SIGSTOP`` — so the lock goes to the second. When the first wakes
up it still means to write; the fencing token it carries is older than the second's, so the
table refuses the write. A one-node cluster keeps the example short; on a three-node cluster
the same calls work from any node.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, select

from catga_sync import locks
from catga_sync.config import ClusterConfig
from catga_sync.errors import StaleTokenError
from catga_sync.fencing import claim, fence_column, fenced_update
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage

metadata = MetaData()
accounts = Table(
    "accounts",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("balance", Integer, nullable=False),
    fence_column(),  # fence_token BIGINT NULL: the newest token that wrote the row
)


def debit(
    engine: Engine,
    lease: locks.Lease,
    amount: int,
    before_write: Callable[[], object] = lambda: None,
) -> int:
    """Read-modify-write under the lock: claim the row with the token, read, write."""
    with engine.begin() as conn:
        claim(conn, accounts, {"id": "ada"}, lease.token)
        balance: int = conn.execute(select(accounts.c.balance)).scalar_one()
    before_write()
    with engine.begin() as conn:
        fenced_update(conn, accounts, {"id": "ada"}, {"balance": balance - amount}, lease.token)
    return balance - amount


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="catga-fencing-") as state:
        run(create_engine(f"sqlite:///{Path(state) / 'bank.sqlite3'}"))


def run(engine: Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert().values(id="ada", balance=100))

    config = ClusterConfig(local_node_endpoint="http://127.0.0.1:7490", node_id="solo")
    node = ClusterNode(config, storage=MemoryStorage("solo"), serve_http=False).start()
    try:
        node.wait_for(lambda s: s.is_leader, 10)

        # Worker 1 takes the lock with a short lease, reads, and is paused before it writes.
        # (auto_renew=False: a paused process does not renew either.)
        first = locks.acquire(node, "account:ada", ttl=0.5, auto_renew=False, owner="worker-1")
        print(f"worker-1 holds the lock with fencing token {first.token}")
        has_read, resume = threading.Event(), threading.Event()
        outcome: list[object] = []

        def pause() -> None:  # the process is stopped here; its lease runs out meanwhile
            has_read.set()
            resume.wait()

        def worker_1() -> None:
            try:
                outcome.append(debit(engine, first, 50, before_write=pause))
            except StaleTokenError as exc:
                outcome.append(exc)

        paused = threading.Thread(target=worker_1)
        paused.start()
        has_read.wait()
        print("worker-1 read the balance (100) and is paused before writing")

        # Worker 2 waits for the lock: it gets it once worker 1's lease expires.
        with locks.lock(node, "account:ada", ttl=5, timeout=10, owner="worker-2") as second:
            print(f"worker-1's lease expired; worker-2 holds the lock with token {second.token}")
            print(f"worker-2 debits 30: balance {debit(engine, second, 30)}")

        print(f"worker-1 wakes up; its lease is valid: {first.is_valid()}; it writes anyway")
        resume.set()
        paused.join()
        print(f"the table says: {outcome[0]}")
        with engine.begin() as conn:
            row = conn.execute(select(accounts.c.balance, accounts.c.fence_token)).one()
        print(f"balance {row.balance}, written last with token {row.fence_token}")
        assert isinstance(outcome[0], StaleTokenError) and row.balance == 70
    finally:
        node.stop()
        engine.dispose()


if __name__ == "__main__":
    main()
