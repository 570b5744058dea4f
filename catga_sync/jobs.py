"""Leader-gated APScheduler jobs: ``@cluster.singleton_job("interval", seconds=30, id="purge")``.

A gated job is an ordinary APScheduler job on every node — the node's own scheduler or yours
(Flask-APScheduler's ``.scheduler``, any 3.x ``BaseScheduler``) — kept *paused* on followers,
resumed when the node is elected and paused again the moment it loses leadership.

**At least once per due fire time, coalesced.** The last completed fire time of each job is
recorded through the Raft log (the :class:`JobRuns` state machine, ``catga.jobs``). Before a
run, the leader passes a read barrier — a majority confirms it still leads and its state has
everything committed before — and reads that record:

- a fire time already recorded as completed is not run again (a new leader does not repeat the
  old leader's last run);
- fire times that fell due and were not completed — during a failover, while the cluster had
  no leader — are run *once*, as the latest of them (a new leader does not skip a run that was
  due; ``misfire_grace_time`` drops catch-ups older than that many seconds);
- a run that ends (returns or raises) is recorded before the job's next fire is considered.

Why not at most once: a leader that dies in the middle of a run, or after the run but before its
record committed, leaves no trace that it finished; the new leader runs that fire time again
rather than risk skipping it. Make a job idempotent, or fence its writes with ``ctx.fencing_token``
(give the function a ``ctx`` parameter to receive a :class:`JobContext`).

APScheduler's own ``coalesce`` and ``max_instances`` are fixed at ``True`` and ``1`` for gated
jobs, and its ``misfire_grace_time`` is applied here, on the fire times recorded in the log.
Triggers with ``jitter`` are refused: fire times must be the same on every node.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import (
    AlreadyRegisteredError,
    CatgaError,
    ConfigError,
    NodeNotRunningError,
    NotRegisteredError,
)
from .fsm import StateMachine, command, query
from .runtime.extension import Extension
from .runtime.leadership import LeadershipChange, LeadershipWatch
from .runtime.status import counter
from .singleton import TaskContext

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from .runtime.extension import NodeHandle

__all__ = ["JobContext", "JobRuns", "LeaderJob", "LeaderJobStats", "LeaderJobs", "describe"]

log = logging.getLogger("catga_sync.jobs")

F = TypeVar("F", bound=Callable[..., Any])

CATCH_UP_LIMIT = 100_000
"""Fire times stepped through when catching up; beyond that the latest is taken as due."""
_SLACK = timedelta(milliseconds=5)
"""A fire time this close ahead of ``now`` counts as due (rounding in triggers' arithmetic)."""


class JobRuns(StateMachine):
    """The last completed fire time of each leader-gated job, replicated through the log.

    Registered on every node (``catga.jobs``). Records only move forward: completing an older
    fire time than the recorded one (a stale leader finishing late) changes nothing.
    """

    name = "catga.jobs"

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}

    @command
    def complete(
        self,
        job_id: str,
        fire_time: str,
        term: int,
        node_id: str,
        error: str | None = None,
        missed: bool = False,
    ) -> bool:
        """Record that ``job_id``'s run for ``fire_time`` (ISO 8601 with offset) ended; True
        when this moved the record forward."""
        fired = datetime.fromisoformat(fire_time)
        if fired.tzinfo is None:
            raise ValueError(f"fire time {fire_time!r} has no UTC offset")
        current = self.runs.get(job_id)
        if current is not None and datetime.fromisoformat(current["fire_time"]) >= fired:
            return False
        # A new dict each time: readers on other threads see the old record or the new one.
        self.runs[job_id] = {
            "fire_time": _iso(fired),
            "term": term,
            "node_id": node_id,
            "error": error,
            "missed": missed,
            "recorded_at": self.now,
        }
        return True

    @command
    def forget(self, job_id: str) -> bool:
        """Drop ``job_id``'s record (its next leader starts from its own schedule)."""
        return self.runs.pop(job_id, None) is not None

    @query
    def last(self, job_id: str) -> dict[str, Any] | None:
        return self.runs.get(job_id)

    @query
    def all(self) -> dict[str, dict[str, Any]]:
        return dict(self.runs)


class JobContext(TaskContext):
    """What a run of a gated job gets when its function has a ``ctx`` parameter: the fencing
    token (the leader's term), the fire time it runs for, and a stop event set when this node
    loses leadership during the run."""

    def __init__(
        self, node: NodeHandle, job_id: str, fencing_token: int, fire_time: datetime
    ) -> None:
        super().__init__(node, job_id, fencing_token)
        self.job_id = job_id
        self.fire_time = fire_time
        """The scheduled time this run is for (the latest due one when runs were coalesced)."""


class LeaderJob:
    """One gated job on one node: its APScheduler job and its counters."""

    def __init__(
        self,
        manager: LeaderJobs,
        func: Callable[..., Any],
        job_id: str,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        scheduler: BaseScheduler,
        jobstore: str,
        misfire_grace_time: float | None,
        timeout: float | None,
    ) -> None:
        self.manager = manager
        self.func = func
        self.id = job_id
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.scheduler = scheduler
        self.jobstore = jobstore
        self.misfire_grace_time = misfire_grace_time
        self.timeout = timeout
        self.key = f"{job_id}@{manager.node.node_id}#{next(_SERIAL)}"
        self.wants_ctx = _accepts_ctx(func)
        self.trigger: Any = None
        """The APScheduler trigger (set when the job is added to its scheduler)."""
        self.resumed_term: int | None = None
        self.anchor: datetime | None = None
        """The first fire time set on election, for a job with no completed run yet."""
        self.active: set[JobContext] = set()
        self.runs = 0
        self.misses = 0
        self.failures = 0
        self.skips = 0
        self.unrecorded = 0
        self.last_error: str | None = None

    # -- on APScheduler's executor thread -------------------------------------------------------

    def fire(self) -> None:
        """One APScheduler run: confirm leadership, consult the record, run, record."""
        manager, node = self.manager, self.manager.node
        status = node.status
        if not status.is_leader:  # a run that slipped past the pause
            return
        term = status.term
        try:
            node.read_barrier(timeout=self._timeout())
        except CatgaError as exc:
            self._count("misses", 1)
            log.warning(
                "job %s not run on node %s: leadership in term %d not confirmed (%s); the "
                "fire time stays due for the next run or the next leader",
                self.id,
                node.node_id,
                term,
                exc,
            )
            return
        status = node.status
        if not (status.is_leader and status.term == term):
            return
        now = datetime.now(_tz(self.scheduler))
        due, coalesced = self._due(self._trigger(), manager.record(self.id), now)
        if due is None:
            self._count("skips", 1)
            log.debug("job %s: its due fire time was already completed; skipped", self.id)
            return
        if coalesced:
            self._count("misses", coalesced)
        grace = self.misfire_grace_time
        if grace is not None and (now - due).total_seconds() > grace:
            self._count("misses", 1)
            log.warning(
                "job %s: fire time %s is %.1fs late, beyond misfire_grace_time; not run",
                self.id,
                due.isoformat(),
                (now - due).total_seconds(),
            )
            self._record(due, term, None, missed=True)
            return
        ctx = JobContext(node, self.id, term, due)
        with manager.lock:
            self.active.add(ctx)
            if not ctx.is_valid():  # lost leadership just now: the listener has not seen ctx
                ctx.stop_event.set()
        self._count("runs", 1)
        error: BaseException | None = None
        try:
            kwargs = {**self.kwargs, "ctx": ctx} if self.wants_ctx else self.kwargs
            self.func(*self.args, **kwargs)
        except BaseException as exc:
            error = exc
            raise  # APScheduler logs it and sends EVENT_JOB_ERROR, as for any job
        finally:
            with manager.lock:
                self.active.discard(ctx)
            if error is not None:
                self._count("failures", 1)
                self.last_error = f"{type(error).__name__}: {error}"
            self._record(due, term, error)

    def _due(
        self, trigger: Any, record: dict[str, Any] | None, now: datetime
    ) -> tuple[datetime | None, int]:
        """The latest fire time at or before ``now`` after the recorded one, and how many
        earlier due fire times it stands for (coalesced)."""
        if record is not None:
            previous = datetime.fromisoformat(record["fire_time"]).astimezone(now.tzinfo)
            candidate = trigger.get_next_fire_time(previous, now)
        else:
            candidate = self.anchor or now
        if candidate is None or candidate > now + _SLACK:
            return None, 0
        due, coalesced = candidate, 0
        for _ in range(CATCH_UP_LIMIT):
            following = trigger.get_next_fire_time(due, now)
            if following is None or following > now + _SLACK:
                break
            due, coalesced = following, coalesced + 1
        return due, coalesced

    def _record(
        self, due: datetime, term: int, error: BaseException | None, *, missed: bool = False
    ) -> None:
        node = self.manager.node
        try:
            node.state(JobRuns).with_timeout(self._timeout()).complete(
                self.id,
                _iso(due),
                term,
                node.node_id,
                error=None if error is None else f"{type(error).__name__}: {error}",
                missed=missed,
            )
        except CatgaError as exc:
            self._count("unrecorded", 1)
            log.warning(
                "job %s: the end of its run for %s was not recorded (%s); the next leader may "
                "run it again (gated jobs run at least once per fire time)",
                self.id,
                due.isoformat(),
                exc,
            )

    def _trigger(self) -> Any:
        """The job's trigger: its scheduler's (it may have been rescheduled), or the one it was
        added with (APScheduler drops a job after its last fire time, maybe during this run)."""
        aps_job = self.scheduler.get_job(self.id, self.jobstore)
        if aps_job is not None:
            self.trigger = aps_job.trigger
        return self.trigger

    def _timeout(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return self.manager.node.timeouts.job_barrier

    def _count(self, counter: str, n: int) -> None:
        with self.manager.lock:
            setattr(self, counter, getattr(self, counter) + n)
            stats = self.manager.stats
            metric = {
                "runs": "leader_job_runs",
                "misses": "leader_job_misses",
                "failures": "leader_job_failures",
                "skips": "leader_job_skips",
            }.get(counter)
            if metric is not None:
                setattr(stats, metric, getattr(stats, metric) + n)

    # -- on the manager's thread -----------------------------------------------------------------

    def resume(self, term: int) -> None:
        """Set the next run to the first fire time after the recorded one (which may be past:
        APScheduler then runs it at once), or to the trigger's own next one."""
        self.resumed_term = term
        if self.scheduler.get_job(self.id, self.jobstore) is None:
            log.info("job %s is no longer in its scheduler (no fire time left?)", self.id)
            return
        trigger = self._trigger()
        now = datetime.now(_tz(self.scheduler))
        record = self.manager.record(self.id)
        if record is not None:
            previous = datetime.fromisoformat(record["fire_time"]).astimezone(now.tzinfo)
            following = trigger.get_next_fire_time(previous, now)
        else:
            following = trigger.get_next_fire_time(None, now)
            self.anchor = following
        if following is not None:
            self.scheduler.modify_job(self.id, self.jobstore, next_run_time=following)

    def pause(self) -> None:
        try:
            if self.scheduler.get_job(self.id, self.jobstore) is not None:
                self.scheduler.pause_job(self.id, self.jobstore)
        except Exception:  # a scheduler shut down by its owner
            log.debug("pausing job %s failed", self.id, exc_info=True)
        self.resumed_term = None

    def describe(self) -> dict[str, Any]:
        next_run: datetime | None = None
        try:
            aps_job = self.scheduler.get_job(self.id, self.jobstore)
            next_run = None if aps_job is None else aps_job.next_run_time
        except Exception:  # a scheduler shut down by its owner
            pass
        if self.active:
            state = "running"
        elif self.resumed_term is not None:
            state = "scheduled" if next_run is not None else "finished"
        else:
            state = "paused"
        return {
            "id": self.id,
            "name": self.name,
            "state": state,
            "fencing_token": self.resumed_term,
            "next_run_time": None if next_run is None else next_run.isoformat(),
            "last_completed": self.manager.record(self.id),
            "runs": self.runs,
            "misses": self.misses,
            "failures": self.failures,
            "skips": self.skips,
            "last_error": self.last_error,
        }


_REGISTRY: dict[str, LeaderJob] = {}
_SERIAL = itertools.count(1)


def _run_gated_job(key: str) -> None:
    """What APScheduler calls (by reference, so persistent job stores can hold the job)."""
    job = _REGISTRY.get(key)
    if job is None:
        log.warning(
            "gated job %s belongs to no live node in this process (left in a persistent job "
            "store by an earlier process?); not run",
            key,
        )
        return
    job.fire()


@dataclass
class LeaderJobStats:
    """Counters of a node's leader-gated jobs (exported as metrics)."""

    leader_job_runs: int = counter("Leader-gated job runs started on this node")
    leader_job_misses: int = counter(
        "Due fire times of gated jobs coalesced, dropped or not confirmed"
    )
    leader_job_failures: int = counter("Leader-gated job runs that raised")
    leader_job_skips: int = counter("Gated job fires skipped because the log shows them completed")


class LeaderJobs(Extension):
    """The leader-gated jobs of one node, and the thread that resumes them on election and
    pauses them when leadership is lost.

    An extension of the node (``node.extensions["singleton_jobs"]``, installed by
    ``ClusterNode``; it registers the :class:`JobRuns` state machine);
    ``LeaderJobs.of(node)`` returns it. ``scheduler`` is where jobs go unless ``add_job``
    names another: by default the node's own (the one given to the node or ``CatgaCluster``,
    else the one the node creates).
    """

    name = "singleton_jobs"

    def __init__(self, *, scheduler: BaseScheduler | None = None) -> None:
        self.lock = threading.Lock()
        self._scheduler = scheduler
        self._jobs: dict[str, LeaderJob] = {}
        self._cond = threading.Condition(self.lock)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = LeaderJobStats()

    @classmethod
    def of(cls, node: NodeHandle) -> LeaderJobs:
        """The gated-job manager installed on ``node``."""
        found = node.extensions.get(cls.name)
        if not isinstance(found, LeaderJobs):
            raise NotRegisteredError(
                f"node {node.node_id} has no leader-gated jobs: install LeaderJobs() on it "
                "(ClusterNode does)"
            )
        return found

    def install(self, node: NodeHandle) -> None:
        self.node = node
        if JobRuns.name not in node.state_machines.machines:
            node.register(JobRuns())  # every node keeps the record of completed runs
        self._watch = LeadershipWatch(node, self._on_leadership)

    @property
    def _leading(self) -> int | None:
        return self._watch.leading

    def add_job(
        self,
        func: Callable[..., Any],
        trigger: Any = None,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        name: str | None = None,
        *,
        scheduler: BaseScheduler | None = None,
        misfire_grace_time: float | None = None,
        jobstore: str = "default",
        executor: str = "default",
        replace_existing: bool = True,
        timeout: float | None = None,
        **trigger_args: Any,
    ) -> LeaderJob:
        """Add ``func`` as a gated job (``BaseScheduler.add_job``'s shape). ``id`` names it
        cluster-wide (default: the function's module and qualified name) and is also its
        APScheduler job id. ``timeout`` bounds the read barrier and the record of each run."""
        _check_options(trigger_args)
        job_id = id or f"{func.__module__}.{func.__qualname__}"
        target = scheduler or self._scheduler or _node_scheduler(self.node)
        job = LeaderJob(
            self,
            func,
            job_id,
            name or str(getattr(func, "__name__", job_id)),
            tuple(args or ()),
            dict(kwargs or {}),
            target,
            jobstore,
            misfire_grace_time,
            timeout,
        )
        with self._cond:
            if self._closed:
                raise NodeNotRunningError(
                    f"node {self.node.node_id} was stopped: add jobs to a new node"
                )
            if job_id in self._jobs:
                raise AlreadyRegisteredError(
                    f"a leader-gated job with id {job_id!r} is already registered on node "
                    f"{self.node.node_id}: give each job a unique id"
                )
            _REGISTRY[job.key] = job
            try:
                aps_job = target.add_job(
                    f"{__name__}:_run_gated_job",
                    trigger,
                    args=[job.key],
                    id=job_id,
                    name=job.name,
                    next_run_time=None,  # paused until this node leads
                    coalesce=True,
                    max_instances=1,
                    misfire_grace_time=None,
                    jobstore=jobstore,
                    executor=executor,
                    replace_existing=replace_existing,
                    **trigger_args,
                )
            except BaseException:
                del _REGISTRY[job.key]
                raise
            job.trigger = aps_job.trigger
            if getattr(aps_job.trigger, "jitter", None):
                target.remove_job(job_id, jobstore)
                del _REGISTRY[job.key]
                raise ConfigError(_JITTER)
            self._jobs[job_id] = job
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._supervise, name=f"catga-jobs-{self.node.node_id}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return job

    def scheduled_job(
        self,
        trigger: Any = None,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_job` (``BaseScheduler.scheduled_job``'s shape)."""

        def decorate(func: F) -> F:
            self.add_job(func, trigger, args, kwargs, id, name, **options)
            return func

        return decorate

    def get(self, job_id: str) -> LeaderJob:
        with self._cond:
            return self._jobs[job_id]

    def record(self, job_id: str) -> dict[str, Any] | None:
        """The last completed run of ``job_id`` as this node has applied it (no barrier)."""
        machine = self.node.state_machines.machines.get(JobRuns.name)
        if not isinstance(machine, JobRuns):
            return None
        return machine.runs.get(job_id)  # a dict replaced whole by the Raft loop: safe to read

    def jobs(self) -> list[dict[str, Any]]:
        """Each gated job's id, name, state, fencing token, next run, last completed run and
        counters."""
        with self._cond:
            jobs = list(self._jobs.values())
        return [job.describe() for job in jobs]

    def describe(self) -> dict[str, Any]:
        """Its part of ``GET /cluster``: ``{"singleton_jobs": [...]}``."""
        return {"singleton_jobs": self.jobs()}

    def counters(self) -> LeaderJobStats:
        return self.stats

    def stop(self) -> None:
        self.close()

    def close(self) -> None:
        """Pause and remove every gated job from its scheduler. (Runs on its own when the node
        stops.)"""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is None:
            self._remove_all()

    # -- the Raft loop's side -------------------------------------------------------------------

    def _on_leadership(self, change: LeadershipChange) -> None:
        leading = change.leading
        with self._cond:
            if change.stopped:
                self._closed = True
            for job in self._jobs.values():
                for ctx in job.active:
                    if ctx.fencing_token != leading:
                        ctx.stop_event.set()
            self._cond.notify_all()

    # -- the manager's thread -------------------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            with self._cond:
                while not self._closed and all(
                    j.resumed_term == self._leading for j in self._jobs.values()
                ):
                    self._cond.wait()
                if self._closed:
                    break
                leading = self._leading
                jobs = [j for j in self._jobs.values() if j.resumed_term != leading]
            if leading is None:
                for job in jobs:
                    job.pause()
                continue
            for job in jobs:  # paused first: a job resumed in an older term must not fire
                if job.resumed_term is not None:
                    job.pause()
            try:
                # Leadership confirmed by a majority, and every completion committed before
                # now applied here: the records read next are current.
                self.node.read_barrier(timeout=jobs[0]._timeout())
            except CatgaError as exc:
                log.info("gated jobs not resumed yet on node %s: %s", self.node.node_id, exc)
                with self._cond:
                    self._cond.wait(0.1)
                continue
            for job in jobs:
                with self._cond:
                    if self._leading != leading or self._closed:
                        break
                try:
                    job.resume(leading)
                except Exception:
                    log.exception("resuming job %s on node %s failed", job.id, self.node.node_id)
                    job.resumed_term = leading  # do not spin; its next election retries it
        self._remove_all()

    def _remove_all(self) -> None:
        with self._cond:
            jobs = list(self._jobs.values())
        for job in jobs:
            try:
                if job.scheduler.get_job(job.id, job.jobstore) is not None:
                    job.scheduler.remove_job(job.id, job.jobstore)
            except Exception:  # a scheduler already shut down by its owner
                log.debug("removing job %s failed", job.id, exc_info=True)
            _REGISTRY.pop(job.key, None)
            job.resumed_term = None


def describe(node: NodeHandle) -> list[dict[str, Any]]:
    """The state of every gated job of ``node`` (``[]`` when it has none)."""
    found = node.extensions.get(LeaderJobs.name)
    return found.jobs() if isinstance(found, LeaderJobs) else []


_JITTER = (
    "leader-gated jobs cannot use a trigger with jitter: their fire times must be the same on "
    "every node (drop `jitter`, or spread the work inside the job)"
)


def check_job_options(trigger: Any, options: dict[str, Any]) -> None:
    """Refuse options a gated job cannot honour (without changing ``options``): what
    :meth:`LeaderJobs.add_job` would refuse, for decorators that register later."""
    _check_options(dict(options))


def _check_options(options: dict[str, Any]) -> None:
    if "next_run_time" in options:
        raise ConfigError("a gated job's next_run_time is set by leadership; do not pass it")
    if options.pop("coalesce", True) is not True:
        raise ConfigError("gated jobs always coalesce (runs missed are run once)")
    if options.pop("max_instances", 1) != 1:
        raise ConfigError("gated jobs run one instance at a time (max_instances=1)")
    if options.get("jitter"):
        raise ConfigError(_JITTER)


def _node_scheduler(node: NodeHandle) -> BaseScheduler:
    """The node's scheduler (its own BackgroundScheduler when it was given none)."""
    return node.scheduler


def _accepts_ctx(func: Callable[..., Any]) -> bool:
    try:
        return "ctx" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _tz(scheduler: BaseScheduler) -> Any:
    return getattr(scheduler, "timezone", None) or timezone.utc


def _iso(moment: datetime) -> str:
    """A fire time as the log records it: UTC, microseconds, so the text sorts as the time."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
