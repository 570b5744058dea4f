"""Singleton tasks: one run per leadership term, moved by failover, stopped by a check-quorum
step-down, found stale by a paused old leader on resume; restarts with backoff; a task that
ignores its stop is reported and never runs twice on a node. The supervisor's rules are checked
on a fake node whose status the test publishes; failover on three real nodes (memory network)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from flask import Flask
from helpers import LocalCluster, poll

from catga_sync.config import ClusterConfig
from catga_sync.errors import CatgaError
from catga_sync.node import ClusterNode, NodeStatus
from catga_sync.raft import Role
from catga_sync.runtime import Extension
from catga_sync.singleton import SingletonTaskRunner, SingletonTasks, TaskContext, describe
from catga_sync.web.extension import CatgaCluster

WAIT = 10.0
ENDPOINTS = [f"http://localhost:{7600 + k}" for k in range(3)]


def eventually(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return poll(predicate, timeout, what, interval=0.005)


class Recorder:
    """A task body that records each run's (node, term) and context, and runs until told
    to stop."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, int]] = []
        self.contexts: dict[tuple[str, int], TaskContext] = {}
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.most_at_once = 0

    def task(self, node_id: str) -> Callable[[TaskContext], None]:
        def run(ctx: TaskContext) -> None:
            with self.lock:
                self.starts.append((node_id, ctx.fencing_token))
                self.contexts[node_id, ctx.fencing_token] = ctx
                self.running[node_id] = self.running.get(node_id, 0) + 1
                self.most_at_once = max(self.most_at_once, self.running[node_id])
            try:
                ctx.stop_event.wait()
            finally:
                with self.lock:
                    self.running[node_id] -= 1

        return run

    def started(self, node_id: str, term: int) -> TaskContext:
        return eventually(lambda: self.contexts.get((node_id, term)), f"a run on {node_id}/{term}")

    def assert_one_node_per_term(self) -> None:
        with self.lock:
            by_term: dict[int, set[str]] = {}
            for node_id, term in self.starts:
                by_term.setdefault(term, set()).add(node_id)
            assert all(len(nodes) == 1 for nodes in by_term.values()), by_term
            assert len(self.starts) == len(set(self.starts)), self.starts


# ---------------------------------------------------------------------------------------------
# Three real nodes on the memory network


class Cluster(LocalCluster):
    """Three nodes on the memory network, each running the recorder's task as "outbox". Its
    :meth:`leader` is the leader of the newest term (an old one may not know it yet)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        super().__init__(3, endpoints=ENDPOINTS, setup=self._add_task, wait=WAIT)

    def _add_task(self, node: ClusterNode) -> None:
        SingletonTasks.of(node).add(self.recorder.task(node.node_id), name="outbox")

    def leader(self, timeout: float | None = None, **options: Any) -> ClusterNode:
        return super().leader(timeout, **{"unique": False, **options})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def cluster(recorder: Recorder) -> Iterator[Cluster]:
    c = Cluster(recorder).start()
    try:
        yield c
    finally:
        c.stop()


def test_the_task_runs_on_one_node_per_term_and_moves_with_each_failover(
    cluster: Cluster, recorder: Recorder
) -> None:
    leader = cluster.leader()
    ctx = recorder.started(leader.node_id, leader.status.term)
    for _ in range(2):
        term = leader.status.term
        cluster.crash(leader)
        assert ctx.stop_event.wait(WAIT)  # the node stopped: its run was told to stop
        new = cluster.leader(above=term)
        # It starts in the term the new leader was elected in: within this one failover.
        ctx = recorder.started(new.node_id, new.status.term)
        assert ctx.fencing_token > term
        assert ctx.is_valid()
        cluster.start_node(int(leader.node_id[-1]))  # the old leader rejoins as a follower
        leader = new
    recorder.assert_one_node_per_term()
    assert recorder.most_at_once == 1
    assert SingletonTasks.of(leader).stats.singleton_task_starts >= 1
    states = {t["name"]: t for t in describe(leader)}
    assert states["outbox"]["state"] == "running"
    assert states["outbox"]["fencing_token"] == leader.status.term


def test_a_partitioned_leader_stops_its_task_by_check_quorum(
    cluster: Cluster, recorder: Recorder
) -> None:
    leader = cluster.leader()
    term = leader.status.term
    ctx = recorder.started(leader.node_id, term)
    cluster.network.isolate(leader.raft_id)
    # Check-quorum: it hears no majority for an election timeout and steps down, and the
    # status listener sets the stop event at once.
    assert ctx.stop_event.wait(WAIT)
    assert not ctx.is_valid()
    new = cluster.leader(above=term, other_than=leader)
    recorder.started(new.node_id, new.status.term)
    cluster.network.heal()
    eventually(lambda: leader.status.leader_endpoint == new.raft_id, "the old leader rejoins")
    recorder.assert_one_node_per_term()
    assert not any(node == leader.node_id and t > term for node, t in recorder.starts)


def test_a_paused_old_leader_learns_on_resume_that_it_is_stale(
    cluster: Cluster, recorder: Recorder
) -> None:
    leader = cluster.leader()
    term = leader.status.term
    ctx = recorder.started(leader.node_id, term)
    paused, resume = threading.Event(), threading.Event()

    def pause_loop() -> None:  # the Raft loop blocks: no ticks, no messages (a long GC pause)
        paused.set()
        resume.wait(3 * WAIT)

    pauser = threading.Thread(target=lambda: leader.run_on_loop(pause_loop, timeout=3 * WAIT))
    pauser.start()
    assert paused.wait(WAIT)
    new = cluster.leader(above=term, other_than=leader)
    new_ctx = recorder.started(new.node_id, new.status.term)
    assert new_ctx.fencing_token > ctx.fencing_token  # what a fenced resource compares
    # While paused it has heard nothing, so its local view still says "leader": only asking a
    # majority tells it otherwise.
    assert ctx.is_valid()
    assert not ctx.confirm_leadership(timeout=0.5)
    resume.set()
    pauser.join(WAIT)
    assert ctx.stop_event.wait(WAIT)  # the first messages it handles depose it
    assert not ctx.is_valid()
    assert not ctx.confirm_leadership()
    recorder.assert_one_node_per_term()


# ---------------------------------------------------------------------------------------------
# The supervisor's rules, on a node whose status the test publishes


E = TypeVar("E", bound=Extension)


class FakeNode:
    """What SingletonTasks uses of a ClusterNode, with a status the test sets."""

    def __init__(self) -> None:
        self.node_id = "fake"
        self.config = ClusterConfig(local_node_endpoint="http://localhost:7690", node_id="fake")
        self.timeouts = self.config.timeouts
        self.extensions: dict[str, Extension] = {}
        self.listeners: list[Callable[[NodeStatus, NodeStatus], None]] = []
        self.status = self._status(Role.FOLLOWER, 1)

    def add_extension(self, extension: E) -> E:
        extension.install(self)  # type: ignore[arg-type]
        self.extensions[extension.name] = extension
        return extension

    def _status(self, role: Role, term: int, running: bool = True) -> NodeStatus:
        leader = "http://localhost:7690" if role is Role.LEADER else None
        return NodeStatus(
            "fake", "http://localhost:7690", role, term, leader, leader, 0, 0, 0, (), running
        )

    def add_status_listener(self, listener: Callable[[NodeStatus, NodeStatus], None]) -> None:
        self.listeners.append(listener)

    def publish(self, role: Role, term: int, running: bool = True) -> None:
        old, self.status = self.status, self._status(role, term, running)
        for listener in self.listeners:
            listener(old, self.status)

    def read_barrier(self, *, timeout: float | None = None) -> int:
        return 0


class Scripted(SingletonTaskRunner):
    """Each run takes the next behaviour: "fail", "return", "ignore" (ignores the stop until
    ``release`` is set) or "run" (until told to stop)."""

    task_name = "scripted"
    stop_timeout = 0.05

    def __init__(self, *behaviours: str) -> None:
        self.behaviours = list(behaviours)
        self.runs: list[TaskContext] = []
        self.release = threading.Event()
        self.active = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def restart_delay(self, failures: int) -> float:
        return 0.01 * failures

    def execute_leader_task(self, ctx: TaskContext) -> None:
        with self.lock:
            self.runs.append(ctx)
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
            behaviour = self.behaviours.pop(0) if self.behaviours else "run"
        try:
            if behaviour == "fail":
                raise RuntimeError(f"boom {len(self.runs)}")
            if behaviour == "ignore":
                self.release.wait(WAIT)
            elif behaviour == "run":
                ctx.stop_event.wait()
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    node = FakeNode()
    yield node
    node.publish(Role.FOLLOWER, node.status.term, running=False)  # closes the managers


def state_of(tasks: SingletonTasks, name: str = "scripted") -> dict[str, Any]:
    return next(t for t in tasks.tasks() if t["name"] == name)


def test_a_new_term_without_a_step_down_in_between_restarts_with_the_new_token(
    fake: FakeNode,
) -> None:
    runner = Scripted()
    tasks = fake.add_extension(SingletonTasks())
    tasks.add(runner)
    fake.publish(Role.LEADER, 5)
    eventually(lambda: len(runner.runs) == 1, "a run in term 5")
    fake.publish(Role.LEADER, 7)  # leader in 5, then (unseen steps between) leader in 7
    assert runner.runs[0].stop_event.is_set()
    eventually(lambda: len(runner.runs) == 2, "a run in term 7")
    assert [c.fencing_token for c in runner.runs] == [5, 7]
    fake.publish(Role.FOLLOWER, 8)
    fake.publish(Role.LEADER, 9)
    eventually(lambda: len(runner.runs) == 3, "a run in term 9")
    assert [c.fencing_token for c in runner.runs] == [5, 7, 9]
    assert runner.runs[1].stop_event.is_set() and not runner.runs[2].stop_event.is_set()
    assert runner.most_at_once == 1
    assert tasks.stats.singleton_task_starts == 3


def test_a_failing_task_is_logged_and_restarted_with_backoff(
    fake: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Scripted("fail", "fail", "run")
    tasks = fake.add_extension(SingletonTasks())
    tasks.add(runner)
    with caplog.at_level(logging.ERROR, logger="catga_sync.singleton"):
        fake.publish(Role.LEADER, 3)
        eventually(lambda: state_of(tasks)["state"] == "running" and len(runner.runs) == 3, "3")
    assert "singleton task scripted failed" in caplog.text
    state = state_of(tasks)
    assert (state["starts"], state["restarts"], state["failures"]) == (3, 2, 2)
    assert state["last_error"] == "RuntimeError: boom 2"
    assert state["fencing_token"] == 3
    stats = tasks.stats
    assert (stats.singleton_task_restarts, stats.singleton_task_failures) == (2, 2)


def test_a_task_that_ignores_its_stop_is_reported_and_never_runs_twice(
    fake: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Scripted("ignore", "run")
    tasks = fake.add_extension(SingletonTasks())
    tasks.add(runner)
    fake.publish(Role.LEADER, 2)
    eventually(lambda: len(runner.runs) == 1, "the first run")
    with caplog.at_level(logging.ERROR, logger="catga_sync.singleton"):
        fake.publish(Role.FOLLOWER, 3)
        eventually(lambda: state_of(tasks)["state"] == "stuck", "the stuck report")
    assert "ignored cancellation" in caplog.text
    assert tasks.stats.singleton_task_stuck == 1
    fake.publish(Role.LEADER, 4)  # leader again while the old run still goes on
    time.sleep(0.1)
    assert len(runner.runs) == 1  # no second run beside the stuck one
    runner.release.set()
    eventually(lambda: len(runner.runs) == 2, "a run once the stuck one returned")
    assert runner.runs[1].fencing_token == 4
    assert runner.most_at_once == 1


def test_a_task_that_returns_while_leading_is_done_for_that_term(fake: FakeNode) -> None:
    runner = Scripted("return")
    tasks = fake.add_extension(SingletonTasks())
    tasks.add(runner)
    fake.publish(Role.LEADER, 2)
    eventually(lambda: state_of(tasks)["state"] == "stopped", "stopped")
    assert len(runner.runs) == 1
    fake.publish(Role.LEADER, 3)
    eventually(lambda: len(runner.runs) == 2, "a run in the next term")


def test_a_task_added_while_leading_starts_at_once_and_close_stops_it(fake: FakeNode) -> None:
    fake.publish(Role.LEADER, 4)
    runner = Scripted()
    tasks = fake.add_extension(SingletonTasks())
    tasks.add(runner)
    eventually(lambda: len(runner.runs) == 1, "a run")
    assert runner.runs[0].is_valid() and runner.runs[0].confirm_leadership()
    assert tasks.close(timeout=WAIT)
    assert runner.runs[0].stop_event.is_set()
    with pytest.raises(CatgaError, match="was stopped"):
        tasks.add(Scripted())


def test_names_are_unique_and_functions_and_classes_are_tasks(fake: FakeNode) -> None:
    tasks = fake.add_extension(SingletonTasks())
    assert SingletonTasks.of(fake) is tasks  # type: ignore[arg-type]

    @tasks.add
    def outbox(ctx: TaskContext) -> None:
        ctx.wait(WAIT)

    class Purger(SingletonTaskRunner):
        def execute_leader_task(self, ctx: TaskContext) -> None:
            ctx.wait(WAIT)

    tasks.add(Purger)
    assert [t["name"] for t in tasks.tasks()] == ["outbox", "Purger"]
    assert all(t["state"] == "waiting" for t in tasks.tasks())
    with pytest.raises(CatgaError, match="already registered"):
        tasks.add(outbox)
    with pytest.raises(TypeError, match="SingletonTaskRunner"):
        tasks.add(42)


# ---------------------------------------------------------------------------------------------
# Through Flask


def test_the_extension_adds_tasks_and_shows_them_in_cluster() -> None:
    app = Flask("test_singleton")
    app.config.update(
        CATGA_CLUSTER_LOCAL_NODE_ENDPOINT="http://localhost:7691", CATGA_CLUSTER_NODE_ID="solo"
    )
    cluster = CatgaCluster(app)
    started = threading.Event()

    class Outbox(SingletonTaskRunner):
        task_name = "OutboxProcessor"

        def execute_leader_task(self, ctx: TaskContext) -> None:
            started.set()
            while not ctx.wait(0.01):
                pass

    try:
        cluster.add_singleton_task(Outbox, app=app)
        assert started.wait(WAIT)
        body = app.test_client().get("/cluster").get_json()
        (task,) = body["singleton_tasks"]
        assert task["name"] == "OutboxProcessor"
        assert task["state"] == "running"
        assert task["fencing_token"] == body["term"]
        assert body["singleton_jobs"] == []
    finally:
        cluster.stop(app)
