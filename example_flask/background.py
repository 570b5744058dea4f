"""Leader-only work of the OrderSystem: the guide's OutboxProcessor as a singleton task, and a
leader-gated APScheduler job that writes a report of the orders.

Both run on whichever node leads, and only there. :func:`example_flask.create_app` registers
them on its app's node with :func:`install` (module-level ``@cluster.singleton_job`` and
``cluster.add_singleton_task`` work too; here the intervals come from the app's config).

Flask config: ``EXAMPLE_OUTBOX_INTERVAL`` (seconds between outbox passes, default 0.5),
``EXAMPLE_REPORT_SECONDS`` (the report job's interval, default 10), and
``EXAMPLE_BACKGROUND = False`` to leave both out (tests that count log entries).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from catga_sync.errors import CatgaError
from catga_sync.jobs import JobContext, LeaderJobs
from catga_sync.singleton import SingletonTaskRunner, SingletonTasks, TaskContext

from .orders import Orders, StaleFencingToken

if TYPE_CHECKING:
    from flask import Flask

    from catga_sync.node import ClusterNode

log = logging.getLogger("example_flask.background")

DEFAULT_OUTBOX_INTERVAL = 0.5
DEFAULT_REPORT_SECONDS = 10.0
REPORT_JOB_ID = "orders.report"


class OutboxProcessor(SingletonTaskRunner):
    """The guide's OutboxProcessor: on the leader, marks created orders processed, stamping the
    fencing token (the leader's term) it ran under. The outbox refuses a token older than one
    it has seen, so a leader that was paused and replaced cannot write after its successor."""

    task_name = "OutboxProcessor"

    def __init__(self, interval: float = DEFAULT_OUTBOX_INTERVAL) -> None:
        self.interval = interval

    def execute_leader_task(self, ctx: TaskContext) -> None:
        log.info("OutboxProcessor started on the leader (fencing token %d)", ctx.fencing_token)
        orders = ctx.node.state(Orders)
        while not ctx.stop_requested:
            for order_id in orders.local.outbox()["pending"]:
                if not ctx.is_valid():
                    break  # leadership lost: the new leader's processor takes over
                try:
                    orders.mark_processed(order_id, ctx.fencing_token)
                except StaleFencingToken:
                    log.warning("OutboxProcessor: token %d is stale; stopping", ctx.fencing_token)
                    return
                except CatgaError as exc:  # no quorum for a moment: try again next pass
                    log.info("OutboxProcessor: %s", exc)
                    break
            ctx.wait(self.interval)
        log.info("OutboxProcessor stopped (fencing token %d)", ctx.fencing_token)


def write_report(ctx: JobContext) -> None:
    """The leader-gated job: counts the orders by status and records the report through the
    log, with the fire time and fencing token it ran for (see ``GET /report``)."""
    orders = ctx.node.state(Orders)
    counts: dict[str, int] = {}
    for order in orders.local.all_orders():
        counts[order["status"]] = counts.get(order["status"], 0) + 1
    orders.record_report(counts, ctx.fire_time.isoformat(), ctx.fencing_token)


def install(node: ClusterNode, app: Flask | None = None) -> None:
    """Register the OutboxProcessor and the report job on ``node``."""
    config: Any = app.config if app is not None else {}
    interval = float(config.get("EXAMPLE_OUTBOX_INTERVAL", DEFAULT_OUTBOX_INTERVAL))
    seconds = float(config.get("EXAMPLE_REPORT_SECONDS", DEFAULT_REPORT_SECONDS))
    SingletonTasks.of(node).add(OutboxProcessor(interval))
    LeaderJobs.of(node).add_job(write_report, "interval", seconds=seconds, id=REPORT_JOB_ID)
