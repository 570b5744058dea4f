"""Singleton tasks: background work that runs on the leader, and only there (the guide's
``SingletonTaskRunner``).

A task starts on a node the moment it becomes leader and is told to stop the moment it is not
leader any more — a hand-off, a higher term seen, a check-quorum step-down while partitioned,
the node stopping — then starts again when leadership comes back. It is event-driven: a status
listener on the Raft loop sets the run's stop event and wakes the supervisor thread, so a start
or a stop costs no polling interval.

Each run gets a :class:`TaskContext`: a :class:`threading.Event` that is set when the run must
stop, the *fencing token* (the term this node leads in; terms only grow, so a resource that
remembers the highest token it saw can refuse a stale leader's writes) and ``is_valid()``.

A run that raises is logged and restarted after a backoff while the node still leads. A run
that does not return within ``stop_timeout`` of being told to stop is reported (an error log
and the ``singleton_task_stuck`` counter) and no second run of that task starts on this node
until it has returned: a task never runs twice on one node.

Leadership is not a lock: an old leader that was paused (a GC, ``SIGSTOP``) or cut off believes
it leads until it hears otherwise, at most about two election timeouts for a partition (check-
quorum), and only after it resumes for a paused process. Work whose overlap would do harm must
carry ``ctx.fencing_token`` to the resource it writes, or confirm with
:meth:`TaskContext.confirm_leadership` before each step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .config_values import Duration
from .config_values import seconds as to_seconds
from .errors import AlreadyRegisteredError, CatgaError, NodeNotRunningError, NotRegisteredError
from .runtime.extension import Extension
from .runtime.leadership import LeadershipChange, LeadershipWatch
from .runtime.status import counter

if TYPE_CHECKING:
    from .runtime.extension import NodeHandle

__all__ = [
    "SingletonTaskRunner",
    "SingletonTaskStats",
    "SingletonTasks",
    "TaskContext",
    "describe",
]

log = logging.getLogger("catga_sync.singleton")

T = TypeVar("T")

HEALTHY_RUN = 60.0
"""A run that lasted this many seconds before it failed resets the restart backoff."""


class TaskContext:
    """What one run of leader-only work is given.

    ``stop_event`` is set the moment this node stops leading in term ``fencing_token`` (or the
    node stops); ``is_valid()`` says whether the run may go on; ``wait(seconds)`` sleeps but
    wakes at once when told to stop — use it instead of ``time.sleep``.
    """

    def __init__(self, node: NodeHandle, name: str, fencing_token: int) -> None:
        self.node = node
        self.name = name
        self.fencing_token = fencing_token
        """The term this node leads in: pass it to what you write to, so it can refuse an
        older one."""
        self.stop_event = threading.Event()

    @property
    def term(self) -> int:
        """The same as :attr:`fencing_token`."""
        return self.fencing_token

    @property
    def stop_requested(self) -> bool:
        """True once the run was told to stop (the guide's ``IsCancellationRequested``)."""
        return self.stop_event.is_set()

    def is_valid(self) -> bool:
        """True while this node, as far as it knows, still leads in the run's term and the
        run was not told to stop. A local check, free; see :meth:`confirm_leadership`."""
        if self.stop_event.is_set():
            return False
        status = self.node.status
        return status.is_leader and status.term == self.fencing_token

    def wait(self, seconds: Duration) -> bool:
        """Sleep up to ``seconds`` (or a ``timedelta``), waking at once when told to stop; True
        when told to stop."""
        return self.stop_event.wait(to_seconds(seconds))

    def confirm_leadership(self, timeout: Duration | None = None) -> bool:
        """Ask a majority whether this node still leads in the run's term (a linearizable read
        barrier: one heartbeat round trip on a healthy leader). False when it does not or when
        no majority answered within ``timeout`` — a paused or partitioned old leader learns
        here that it is stale, before it writes."""
        if not self.is_valid():
            return False
        if timeout is None:
            timeout = self.node.timeouts.confirm_leadership
        try:
            self.node.read_barrier(timeout=to_seconds(timeout))
        except CatgaError:
            return False
        return self.is_valid()

    def __repr__(self) -> str:
        stopped = " stopped" if self.stop_event.is_set() else ""
        return f"<TaskContext {self.name} token={self.fencing_token}{stopped}>"


class SingletonTaskRunner:
    """Base class of singleton tasks: subclass it, name it, implement
    :meth:`execute_leader_task`, and register an instance (or the class) with
    ``cluster.add_singleton_task(...)`` or ``SingletonTasks.of(node).add(...)``.

    ``execute_leader_task`` should loop until ``ctx.stop_requested`` (sleeping with
    ``ctx.wait(...)``) and then return. It is called again, with a new context, each time this
    node becomes leader; if it raises, it is called again after :meth:`restart_delay` while the
    node still leads. If it returns on its own while still leader, it is done for this term.
    """

    task_name: str = ""
    """The task's name, unique on a node (default: the class name)."""
    stop_timeout: float = 10.0
    """Seconds a run may take to return once told to stop before it is reported stuck."""

    def execute_leader_task(self, ctx: TaskContext) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement execute_leader_task")

    def restart_delay(self, failures: int) -> float:
        """Seconds to wait before restarting after the ``failures``-th failure in a row
        (0.5 s, doubling, at most 30 s)."""
        return float(min(30.0, 0.5 * 2 ** (failures - 1)))


class _FunctionTask(SingletonTaskRunner):
    """A plain function ``fn(ctx)`` as a singleton task."""

    def __init__(self, fn: Callable[[TaskContext], Any], name: str) -> None:
        self.fn = fn
        self.task_name = name

    def execute_leader_task(self, ctx: TaskContext) -> None:
        self.fn(ctx)


@dataclass(eq=False)
class _Task:
    runner: SingletonTaskRunner
    name: str
    state: str = "waiting"
    ctx: TaskContext | None = None
    thread: threading.Thread | None = None
    fencing_token: int | None = None
    starts: int = 0
    restarts: int = 0
    failures: int = 0
    failures_in_row: int = 0
    last_error: str | None = None
    retry_at: float | None = None
    retry_term: int | None = None
    done_term: int | None = None
    stop_asked_at: float | None = None
    stuck: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "fencing_token": self.fencing_token,
            "term": self.fencing_token,
            "starts": self.starts,
            "restarts": self.restarts,
            "failures": self.failures,
            "last_error": self.last_error,
        }


@dataclass
class SingletonTaskStats:
    """Counters of a node's singleton tasks (exported as metrics)."""

    singleton_task_starts: int = counter("Singleton task runs started on this node")
    singleton_task_stops: int = counter("Singleton task runs that ended")
    singleton_task_restarts: int = counter("Singleton task runs started again after a failure")
    singleton_task_failures: int = counter("Singleton task runs that raised")
    singleton_task_stuck: int = counter(
        "Singleton task runs that ignored the stop past stop_timeout"
    )


class SingletonTasks(Extension):
    """The singleton tasks of one node, and the supervisor thread that starts and stops them.

    An extension of the node (``node.extensions["singleton_tasks"]``, installed by
    ``ClusterNode``); ``SingletonTasks.of(node)`` returns it (what
    ``CatgaCluster.add_singleton_task`` uses). Tasks may be added before or after the node
    starts.

    States shown by :meth:`tasks` (and ``GET /cluster``): ``waiting`` (not leader),
    ``running``, ``stopping`` (told to stop, not returned yet), ``stuck`` (ignored the stop for
    longer than ``stop_timeout``), ``failed`` (raised; restarts after a backoff) and
    ``stopped`` (returned on its own; starts again at the next leadership).
    """

    name = "singleton_tasks"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tasks: dict[str, _Task] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = SingletonTaskStats()

    @classmethod
    def of(cls, node: NodeHandle) -> SingletonTasks:
        """The singleton task manager installed on ``node``."""
        found = node.extensions.get(cls.name)
        if not isinstance(found, SingletonTasks):
            raise NotRegisteredError(
                f"node {node.node_id} has no singleton tasks: install SingletonTasks() on it "
                "(ClusterNode does)"
            )
        return found

    def install(self, node: NodeHandle) -> None:
        self._node = node
        self._watch = LeadershipWatch(node, self._on_leadership)

    @property
    def _leading(self) -> int | None:
        return self._watch.leading

    @property
    def node(self) -> NodeHandle:
        return self._node

    def add(self, task: T, *, name: str | None = None) -> T:
        """Run ``task`` whenever this node leads: a :class:`SingletonTaskRunner` instance, a
        subclass (instantiated without arguments) or a function ``fn(ctx)``. Returns ``task``,
        so it also works as a decorator on a function."""
        runner = _as_runner(task, name)
        with self._cond:
            if self._closed:
                raise NodeNotRunningError(
                    f"node {self._node.node_id} was stopped: add singleton tasks to a new node"
                )
            if runner.task_name in self._tasks:
                raise AlreadyRegisteredError(
                    f"a singleton task named {runner.task_name!r} is already registered on node "
                    f"{self._node.node_id}: give each task a unique task_name"
                )
            self._tasks[runner.task_name] = _Task(runner, runner.task_name)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._supervise,
                    name=f"catga-singletons-{self._node.node_id}",
                    daemon=True,
                )
                self._thread.start()
            self._cond.notify_all()
        return task

    def tasks(self) -> list[dict[str, Any]]:
        """Each task's name, state, fencing token (the term of its last run), starts,
        restarts, failures and last error."""
        with self._cond:
            return [task.describe() for task in self._tasks.values()]

    def describe(self) -> dict[str, Any]:
        """Its part of ``GET /cluster``: ``{"singleton_tasks": [...]}``."""
        return {"singleton_tasks": self.tasks()}

    def counters(self) -> SingletonTaskStats:
        return self.stats

    def stop(self) -> None:
        self.close()

    def close(self, timeout: Duration = 0.0) -> bool:
        """Tell every run to stop and start no more; wait up to ``timeout`` for them to
        return. True when none is still running. (Runs on its own when the node stops.)"""
        with self._cond:
            self._closed = True
            for task in self._tasks.values():
                if task.ctx is not None:
                    task.ctx.stop_event.set()
            self._cond.notify_all()
            deadline = self._clock() + to_seconds(timeout)
            while any(t.thread is not None for t in self._tasks.values()):
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- the Raft loop's side: tiny, never blocks ----------------------------------------------

    def _on_leadership(self, change: LeadershipChange) -> None:
        leading = change.leading
        with self._cond:
            if change.stopped:
                self._closed = True
            for task in self._tasks.values():
                ctx = task.ctx
                if ctx is not None and (ctx.fencing_token != leading or self._closed):
                    ctx.stop_event.set()  # the run learns it at once, not at the next reconcile
            self._cond.notify_all()

    # -- the supervisor thread ----------------------------------------------------------------

    def _supervise(self) -> None:
        with self._cond:
            while True:
                wake = self._reconcile(self._clock())
                if self._closed and all(t.thread is None for t in self._tasks.values()):
                    return
                self._cond.wait(None if wake is None else max(0.0, wake - self._clock()))

    def _reconcile(self, now: float) -> float | None:
        """Start, stop and report tasks for the current leadership; the next time to look."""
        leading = None if self._closed else self._leading
        wake: float | None = None
        for task in self._tasks.values():
            if task.thread is not None:  # a run is in progress: stop it if its term is over
                ctx = task.ctx
                assert ctx is not None
                if ctx.fencing_token == leading:
                    continue
                ctx.stop_event.set()
                if task.stop_asked_at is None:
                    task.stop_asked_at = now
                if not task.stuck:
                    deadline = task.stop_asked_at + task.runner.stop_timeout
                    if now >= deadline:
                        self._report_stuck(task, now)
                    else:
                        task.state = "stopping"
                        wake = deadline if wake is None else min(wake, deadline)
                continue
            if leading is None:
                task.state = "waiting"
            elif task.done_term == leading:
                task.state = "stopped"
            elif task.retry_term == leading and task.retry_at is not None and now < task.retry_at:
                task.state = "failed"
                wake = task.retry_at if wake is None else min(wake, task.retry_at)
            else:
                self._start(task, leading)
        return wake

    def _start(self, task: _Task, term: int) -> None:
        restart = task.retry_term == term
        if task.fencing_token != term:
            task.failures_in_row = 0  # a new leadership starts afresh
        task.retry_at = task.retry_term = None
        ctx = TaskContext(self._node, task.name, term)
        task.ctx = ctx
        task.fencing_token = term
        task.stop_asked_at = None
        task.state = "running"
        task.starts += 1
        stats = self.stats
        stats.singleton_task_starts += 1
        if restart:
            task.restarts += 1
            stats.singleton_task_restarts += 1
        task.thread = threading.Thread(
            target=self._run,
            args=(task, ctx),
            name=f"catga-task-{task.name}-{self._node.node_id}",
            daemon=True,
        )
        task.thread.start()
        log.info(
            "singleton task %s %sstarted on node %s (term %d)",
            task.name,
            "re" if restart else "",
            self._node.node_id,
            term,
        )

    def _run(self, task: _Task, ctx: TaskContext) -> None:
        started = self._clock()
        error: Exception | None = None
        try:
            task.runner.execute_leader_task(ctx)
        except Exception as exc:
            error = exc
            log.exception(
                "singleton task %s failed on node %s (term %d)",
                task.name,
                self._node.node_id,
                ctx.fencing_token,
            )
        finally:
            self._finished(task, ctx, error, self._clock() - started)

    def _finished(
        self, task: _Task, ctx: TaskContext, error: Exception | None, lasted: float
    ) -> None:
        with self._cond:
            task.thread = None
            task.ctx = None
            self.stats.singleton_task_stops += 1
            if task.stuck:
                task.stuck = False
                log.warning(
                    "singleton task %s on node %s returned %.1fs after it was told to stop",
                    task.name,
                    self._node.node_id,
                    self._clock() - (task.stop_asked_at or self._clock()),
                )
            if error is not None:
                task.failures += 1
                self.stats.singleton_task_failures += 1
                task.failures_in_row = 1 if lasted >= HEALTHY_RUN else task.failures_in_row + 1
                task.last_error = f"{type(error).__name__}: {error}"
                if not ctx.stop_event.is_set():
                    delay = task.runner.restart_delay(task.failures_in_row)
                    task.retry_at = self._clock() + delay
                    task.retry_term = ctx.fencing_token
                    log.info("singleton task %s restarts in %.2fs", task.name, delay)
            elif not ctx.stop_event.is_set():
                task.done_term = ctx.fencing_token
                log.info(
                    "singleton task %s returned while node %s leads (term %d): it starts again "
                    "at the next leadership",
                    task.name,
                    self._node.node_id,
                    ctx.fencing_token,
                )
            self._cond.notify_all()

    def _report_stuck(self, task: _Task, now: float) -> None:
        task.stuck = True
        task.state = "stuck"
        self.stats.singleton_task_stuck += 1
        log.error(
            "singleton task %s on node %s ignored cancellation: still running %.1fs after it was "
            "told to stop (term %s is over); it will not start again on this node until it "
            "returns. Make execute_leader_task check ctx.stop_requested or sleep with ctx.wait().",
            task.name,
            self._node.node_id,
            now - (task.stop_asked_at or now),
            task.fencing_token,
        )


def describe(node: NodeHandle) -> list[dict[str, Any]]:
    """The state of every singleton task of ``node`` (``[]`` when it has none)."""
    found = node.extensions.get(SingletonTasks.name)
    return found.tasks() if isinstance(found, SingletonTasks) else []


def _as_runner(task: Any, name: str | None) -> SingletonTaskRunner:
    if isinstance(task, type) and issubclass(task, SingletonTaskRunner):
        task = task()
    if isinstance(task, SingletonTaskRunner):
        if name:
            task.task_name = name
        elif not task.task_name:
            task.task_name = type(task).__name__
        return task
    if callable(task):
        return _FunctionTask(task, name or getattr(task, "__name__", "") or repr(task))
    raise TypeError(
        f"a singleton task is a SingletonTaskRunner (instance or subclass) or a function "
        f"fn(ctx), not {type(task).__name__}"
    )
