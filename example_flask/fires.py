"""A leader-gated job that writes each of its fire times into a SQL table of its own, fenced.

The shape of the problem people bring to APScheduler: a job that must run once per fire time
although the app runs in N gunicorn workers on each of M hosts. Here it runs on the leader's
hosting worker only; each run claims the table's fence row with its fencing token (a deposed
leader that wakes up cannot write after its successor) and inserts one row for its fire time,
with the node and the worker's pid that ran it — so a test, or you, can count the runs of
every fire time.

Off unless configured: ``EXAMPLE_FIRES_URL`` (a SQLAlchemy URL of a database every node can
reach, e.g. ``sqlite:////tmp/fires.sqlite3``) and ``EXAMPLE_FIRES_SECONDS`` (default 1), as
Flask config keys or environment variables.
"""

from __future__ import annotations

import contextlib
import os
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from catga_sync.fencing import claim, fence_column
from catga_sync.jobs import JobContext, LeaderJobs

if TYPE_CHECKING:
    from catga_sync.node import ClusterNode

JOB_ID = "orders.fires"
FENCE_NAME = "fires"

metadata = MetaData()
fires = Table(
    "job_fires",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fire_time", String(40), nullable=False),
    Column("node", String(100), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("fencing_token", BigInteger, nullable=False),
)
fence = Table(
    "job_fence",
    metadata,
    Column("name", String(40), primary_key=True),
    fence_column(),
)


@cache
def _engine(url: str) -> Engine:
    engine = create_engine(url)
    # Another process (the leader, a test reading the table) may create them at the same time.
    with contextlib.suppress(OperationalError):
        metadata.create_all(engine)
    with contextlib.suppress(IntegrityError), engine.begin() as conn:
        if conn.execute(select(fence.c.name).where(fence.c.name == FENCE_NAME)).first() is None:
            conn.execute(insert(fence).values(name=FENCE_NAME, fence_token=None))
    return engine


def write_fire(ctx: JobContext, url: str) -> None:
    """One run: claim the fence with this leader's token, then record the fire time."""
    with _engine(url).begin() as conn:
        claim(conn, fence, {"name": FENCE_NAME}, ctx.fencing_token)
        conn.execute(
            insert(fires).values(
                fire_time=ctx.fire_time.isoformat(),
                node=ctx.node.node_id,
                pid=os.getpid(),
                fencing_token=ctx.fencing_token,
            )
        )


def runs(url: str) -> list[dict[str, Any]]:
    """Every recorded run, oldest first."""
    with _engine(url).connect() as conn:
        rows = conn.execute(select(fires).order_by(fires.c.id)).mappings().all()
    return [dict(row) for row in rows]


def install(node: ClusterNode, config: Any) -> None:
    """Add the job to ``node`` when ``EXAMPLE_FIRES_URL`` is set (config, else environment)."""
    url = config.get("EXAMPLE_FIRES_URL") or os.environ.get("EXAMPLE_FIRES_URL")
    if not url:
        return
    seconds = float(
        config.get("EXAMPLE_FIRES_SECONDS") or os.environ.get("EXAMPLE_FIRES_SECONDS") or 1.0
    )
    LeaderJobs.of(node).add_job(
        write_fire, "interval", seconds=seconds, id=JOB_ID, kwargs={"url": url}
    )
