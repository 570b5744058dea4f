"""The scheduler pacemaker: an APScheduler interval job that runs every heartbeat interval on
a leader and wakes its Raft loop should the loop's own timer be starved: only when the loop
has slept more than a tick past its planned wake-up (``RaftLoop.nudge``). A wake-up at every
run, while the loop's timer sends the heartbeats on time, was a second wake-up of the loop per
heartbeat for nothing: measured side by side, an idle leader's loop 1.23 → 0.87% of a core.

The job is paused while the node does not lead: a follower sends no heartbeats, and its
election timer is the loop's own timed wait, which the job's wake-ups never moved. Twenty
runs a second of a job that did nothing were a tenth of an idle follower's CPU.

APScheduler does not drive every 10 ms tick itself because, measured here, a 10 ms job costs
4.2% of a core in an idle process (a timed queue wait: 0.6%) and skips runs under load. The job
runs with ``max_instances=1``, ``coalesce=True`` and no misfire drop; the runs it skips are
counted (``stats.skipped_jobs``), never logged one by one.

The job runs on its own executor, :data:`EXECUTOR_ALIAS`, which calls it in the scheduler's
thread (APScheduler's ``DebugExecutor``) with that executor's logger at WARNING: all the job
does is put a wake-up in the loop's queue, and handing that to a pool thread, with two INFO
records per run ("Running job", "executed successfully"), cost more than the wake-up itself,
twenty times a second on every leader. A run therefore never overlaps the previous one: a busy
process makes it late (the loop's late ticks show it) rather than skipped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..raft import Role

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from .status import NodeStatus

__all__ = ["Pacemaker"]

log = logging.getLogger("catga_sync.node")

JOB_NAME_PREFIX = "catga_sync tick"
EXECUTOR_ALIAS = "catga_sync-pacemaker"
"""The scheduler's executor for tick jobs (one per scheduler, shared by its nodes)."""
_EXECUTOR_LOGGER = f"apscheduler.executors.{EXECUTOR_ALIAS}"


class Pacemaker:
    """The node's scheduler (the one it was given, or its own BackgroundScheduler, made on
    first use, started with the node and shut down with it) and the tick job on it."""

    def __init__(
        self,
        node_id: str,
        job_id: str,
        interval: float,
        wake: Callable[[], None],
        on_skip: Callable[[], None],
        scheduler: BaseScheduler | None = None,
    ) -> None:
        self._node_id = node_id
        self._job_id = job_id
        self._interval = interval
        self._wake = wake
        self._on_skip = on_skip
        self._scheduler = scheduler
        self._owns_scheduler = scheduler is None
        self._lock = threading.Lock()
        self._leading = False
        """Whether the node leads, as the status last said."""
        self._job_runs = False
        """Whether the job was last added or resumed (True) or paused (False)."""
        self._added = False
        self._applying = False
        """An applier thread runs (it sees every change until it ends)."""
        self._apply_lock = threading.Lock()

    @property
    def scheduler(self) -> BaseScheduler:
        if self._scheduler is None:
            from apscheduler.schedulers.background import BackgroundScheduler

            self._scheduler = BackgroundScheduler(daemon=True)
        return self._scheduler

    def start(self) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        scheduler = self.scheduler
        _quiet_skip_warnings()
        scheduler.add_listener(self._on_job_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        _add_inline_executor(scheduler)
        with self._lock:
            self._add_job(scheduler)
        if not scheduler.running:
            scheduler.start()
        # A leadership change during the scheduler's start may have found the job neither
        # pending nor scheduled yet: make the job match who leads now.
        self._apply_leading()

    def on_status(self, old: NodeStatus, new: NodeStatus) -> None:
        """A status listener (on the Raft loop): resume the job when the node starts leading,
        pause it when it stops — on a thread of its own, since both take the scheduler's job
        store lock, which a persistent job store of the user's holds for a database round
        trip while the scheduler looks for due jobs."""
        leading = new.role is Role.LEADER
        if leading == (old.role is Role.LEADER):
            return
        with self._lock:
            self._leading = leading
            if not self._added or self._applying:
                return  # start() adds it as it should be; a running applier sees the change
            self._applying = True
        threading.Thread(
            target=self._apply_leading, name=f"catga-tick-{self._node_id}", daemon=True
        ).start()

    def _apply_leading(self) -> None:
        """Pause or resume the job until it matches the latest leadership (one at a time)."""
        with self._apply_lock:
            while True:
                with self._lock:
                    leading = self._leading
                    if not self._added or leading == self._job_runs:
                        self._applying = False
                        return
                try:
                    if leading:
                        self.scheduler.resume_job(self._job_id, jobstore="default")
                    else:
                        self.scheduler.pause_job(self._job_id, jobstore="default")
                except Exception as exc:  # removed, or the scheduler's owner shut it down
                    log.debug("node %s: tick job not changed: %s", self._node_id, exc)
                    with self._lock:
                        self._applying = False
                    return
                with self._lock:
                    self._job_runs = leading

    def _add_job(self, scheduler: BaseScheduler) -> None:
        extra: dict[str, Any] = {} if self._leading else {"next_run_time": None}  # paused
        scheduler.add_job(
            self._wake,
            "interval",
            seconds=self._interval,
            id=self._job_id,
            name=f"{JOB_NAME_PREFIX} ({self._node_id})",
            executor=EXECUTOR_ALIAS,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            replace_existing=True,
            jobstore="default",
            **extra,
        )
        self._added = True
        self._job_runs = self._leading

    def stop(self) -> None:
        """Remove the tick job, and shut the scheduler down if it is the node's own."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        with self._lock:
            self._added = False
        try:
            if scheduler.get_job(self._job_id) is not None:
                scheduler.remove_job(self._job_id)
            if self._owns_scheduler and scheduler.running:
                scheduler.shutdown(wait=False)
        except Exception:  # the scheduler may already be shut down by its owner
            log.debug("scheduler cleanup failed", exc_info=True)

    def _on_job_skipped(self, event: Any) -> None:
        if getattr(event, "job_id", None) == self._job_id:
            self._on_skip()


def _add_inline_executor(scheduler: BaseScheduler) -> None:
    from apscheduler.executors.debug import DebugExecutor

    logging.getLogger(_EXECUTOR_LOGGER).setLevel(logging.WARNING)
    with contextlib.suppress(ValueError):  # another node on this scheduler added it
        scheduler.add_executor(DebugExecutor(), EXECUTOR_ALIAS)


class _SkipFilter(logging.Filter):
    """Drop APScheduler's per-run "skipped"/"missed" warnings for our tick jobs: they are
    counted instead (a busy process would otherwise log one every heartbeat)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return JOB_NAME_PREFIX not in record.getMessage()


_FILTER = _SkipFilter()


def _quiet_skip_warnings() -> None:
    for name in ("apscheduler.scheduler", "apscheduler.executors.default", _EXECUTOR_LOGGER):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
