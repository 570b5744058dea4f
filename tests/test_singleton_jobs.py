"""Leader-gated APScheduler jobs on three real nodes (memory network): they run on the leader
only, are paused on followers, and across a failover the new leader neither repeats a fire
time recorded as completed nor skips one that fell due (it runs it once, coalesced)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask
from helpers import LocalCluster, poll

from catga_sync.config import ClusterConfig
from catga_sync.errors import ConfigError
from catga_sync.jobs import JobContext, JobRuns, LeaderJobs, describe
from catga_sync.node import ClusterNode
from catga_sync.web.extension import CatgaCluster

WAIT = 10.0
ENDPOINTS = [f"http://localhost:{7700 + k}" for k in range(3)]
INTERVAL = 0.25


def eventually(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return poll(predicate, timeout, what, interval=0.005)


class Runs:
    """A job body recording (node, term, fire time) of every run."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int, datetime]] = []
        self.lock = threading.Lock()

    def job(self, node_id: str) -> Callable[..., None]:
        def purge(ctx: JobContext) -> None:
            with self.lock:
                self.runs.append((node_id, ctx.fencing_token, ctx.fire_time))

        return purge

    def of(self, node_id: str) -> list[datetime]:
        with self.lock:
            return [fire for node, _, fire in self.runs if node == node_id]

    def assert_one_node_per_term(self) -> None:
        with self.lock:
            by_term: dict[int, set[str]] = {}
            for node, term, _ in self.runs:
                by_term.setdefault(term, set()).add(node)
        assert all(len(nodes) == 1 for nodes in by_term.values()), by_term


class Cluster(LocalCluster):
    """Three nodes on the memory network."""

    def __init__(self) -> None:
        super().__init__(3, endpoints=ENDPOINTS, wait=WAIT)

    def add_everywhere(self, runs: Runs, **options: Any) -> None:
        for node in self.nodes:
            LeaderJobs.of(node).add_job(runs.job(node.node_id), id="purge", **options)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def aps_job(node: ClusterNode) -> Any:
    return node.scheduler.get_job("purge")


def record(node: ClusterNode) -> dict[str, Any] | None:
    return LeaderJobs.of(node).record("purge")


def test_a_gated_job_runs_on_the_leader_only_and_is_paused_on_followers(
    cluster: Cluster,
) -> None:
    runs = Runs()
    leader = cluster.leader()
    cluster.add_everywhere(runs, trigger="interval", seconds=INTERVAL)
    eventually(lambda: len(runs.of(leader.node_id)) >= 3, "three runs on the leader")
    assert {node for node, _, _ in runs.runs} == {leader.node_id}
    assert all(term == leader.status.term for _, term, _ in runs.runs)
    for node in cluster.nodes:
        if node is not leader:
            assert aps_job(node).next_run_time is None  # paused
    assert aps_job(leader).next_run_time is not None
    fires = runs.of(leader.node_id)
    steps = [(b - a).total_seconds() / INTERVAL for a, b in itertools.pairwise(fires)]
    # One run per fire time, in order, on the trigger's grid; a fire time the scheduler
    # reached too late under load is coalesced into the next, and counted as missed.
    assert all(s >= 1 - 1e-3 and abs(s - round(s)) < 4e-3 for s in steps), steps
    assert LeaderJobs.of(leader).stats.leader_job_misses >= sum(round(s) - 1 for s in steps)
    # Every node applied the record of the leader's runs.
    for node in cluster.nodes:
        eventually(lambda n=node: record(n) is not None, "the record everywhere")
    assert LeaderJobs.of(leader).stats.leader_job_runs >= 3
    (state,) = describe(leader)
    assert state["id"] == "purge" and state["state"] in ("scheduled", "running")
    assert state["fencing_token"] == leader.status.term
    follower_state = describe(next(n for n in cluster.nodes if n is not leader))[0]
    assert follower_state["state"] == "paused"


def test_failover_neither_repeats_a_completed_fire_time_nor_skips_a_due_one(
    cluster: Cluster,
) -> None:
    runs = Runs()
    old = cluster.leader()
    cluster.add_everywhere(runs, trigger="interval", seconds=INTERVAL)
    eventually(lambda: len(runs.of(old.node_id)) >= 2, "runs on the first leader")
    term = old.status.term
    old.stop(transfer=False)  # a crash, at any point of the schedule
    cluster.network.unregister(old.raft_id)
    new = cluster.leader(above=term)
    eventually(lambda: len(runs.of(new.node_id)) >= 2, "runs on the new leader")
    old_fires, new_fires = runs.of(old.node_id), runs.of(new.node_id)
    old_job = LeaderJobs.of(old).get("purge")
    if old_job.unrecorded == 0:  # every run of the old leader made it into the log ...
        assert not set(old_fires) & set(new_fires)  # ... so none is run again
    # No due fire time skipped: the new leader's first run is on the old leader's grid, and
    # the fire times between (due during the failover) are the ones it coalesced.
    gap = (new_fires[0] - old_fires[-1]).total_seconds()
    steps = round(gap / INTERVAL)
    assert abs(gap - steps * INTERVAL) < 1e-3
    assert steps >= (0 if old_job.unrecorded else 1)
    assert LeaderJobs.of(new).stats.leader_job_misses >= max(0, steps - 1)
    runs.assert_one_node_per_term()


def test_a_new_leader_runs_fire_times_missed_while_there_was_none_once(cluster: Cluster) -> None:
    leader = cluster.leader()
    last = datetime.now(timezone.utc) - timedelta(hours=10, minutes=30)
    leader.state(JobRuns).complete("purge", last.isoformat(), 0, "an earlier leader")
    runs = Runs()
    cluster.add_everywhere(runs, trigger="interval", hours=1)
    eventually(lambda: runs.runs, "the catch-up run")
    ((node, _, fire),) = runs.runs
    assert node == leader.node_id
    assert fire == last + timedelta(hours=10)  # the latest fire time that fell due, once
    assert LeaderJobs.of(leader).stats.leader_job_misses == 9  # the nine before it, coalesced
    eventually(lambda: (record(leader) or {}).get("node_id") == leader.node_id, "the record")
    assert aps_job(leader).next_run_time == last + timedelta(hours=11)


def test_a_fire_time_recorded_as_completed_is_not_run_again(cluster: Cluster) -> None:
    leader = cluster.leader()
    last = datetime.now(timezone.utc) - timedelta(minutes=30)
    leader.state(JobRuns).complete("purge", last.isoformat(), 0, "an earlier leader")
    runs = Runs()
    cluster.add_everywhere(runs, trigger="interval", hours=1)
    eventually(lambda: aps_job(leader).next_run_time is not None, "the job resumed")
    assert aps_job(leader).next_run_time == last + timedelta(hours=1)
    assert not runs.runs


def test_a_one_shot_job_runs_once_for_the_cluster_even_across_a_failover(
    cluster: Cluster,
) -> None:
    runs = Runs()
    leader = cluster.leader()
    when = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    cluster.add_everywhere(runs, trigger="date", run_date=when)
    eventually(lambda: (record(leader) or {}).get("node_id") == leader.node_id, "the record")
    assert [(node, fire) for node, _, fire in runs.runs] == [(leader.node_id, when)]
    term = leader.status.term
    leader.stop(transfer=False)
    cluster.network.unregister(leader.raft_id)
    new = cluster.leader(above=term)
    eventually(lambda: describe(new)[0]["fencing_token"] == new.status.term, "resumed")
    assert describe(new)[0]["state"] == "finished"  # no fire time left after the recorded one
    assert len(runs.runs) == 1


def test_a_catch_up_older_than_misfire_grace_time_is_recorded_as_missed(
    cluster: Cluster,
) -> None:
    leader = cluster.leader()
    last = datetime.now(timezone.utc) - timedelta(hours=2, minutes=30)
    leader.state(JobRuns).complete("purge", last.isoformat(), 0, "an earlier leader")
    runs = Runs()
    cluster.add_everywhere(runs, trigger="interval", hours=1, misfire_grace_time=60)
    eventually(lambda: (record(leader) or {}).get("missed"), "the miss recorded")
    assert not runs.runs
    assert record(leader)["fire_time"] == (last + timedelta(hours=2)).isoformat()  # type: ignore[index]
    assert LeaderJobs.of(leader).stats.leader_job_misses == 2


def test_a_users_scheduler_with_a_persistent_job_store(cluster: Cluster, tmp_path: Path) -> None:
    """Jobs go to any APScheduler 3 scheduler (Flask-APScheduler's ``.scheduler`` is one),
    also with a job store that pickles jobs: the job names its function by reference."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    schedulers = {
        node_id: BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{tmp_path}/{node_id}.db")}
        )
        for node_id in (node.node_id for node in cluster.nodes)
    }
    runs = Runs()
    try:
        for node in cluster.nodes:
            node_id = node.node_id
            schedulers[node_id].start()
            jobs = LeaderJobs.of(node)
            jobs.scheduled_job(
                "interval", id="purge", seconds=INTERVAL, scheduler=schedulers[node_id]
            )(runs.job(node_id))
        leader = cluster.leader()
        eventually(lambda: len(runs.of(leader.node_id)) >= 2, "runs on the leader")
        assert {node for node, _, _ in runs.runs} == {leader.node_id}
        for node_id, scheduler in schedulers.items():
            paused = scheduler.get_job("purge").next_run_time is None
            assert paused == (node_id != leader.node_id)
    finally:
        for scheduler in schedulers.values():
            scheduler.shutdown(wait=False)


def test_options_that_would_break_the_semantics_are_refused(cluster: Cluster) -> None:
    jobs = LeaderJobs.of(cluster.nodes[0])
    for options, message in [
        ({"jitter": 5}, "jitter"),
        ({"coalesce": False}, "coalesce"),
        ({"max_instances": 2}, "max_instances"),
        ({"next_run_time": datetime.now(timezone.utc)}, "next_run_time"),
    ]:
        with pytest.raises(ConfigError, match=message):
            jobs.add_job(print, "interval", id="bad", seconds=1, **options)
    assert describe(cluster.nodes[0]) == []


def test_the_extension_gates_jobs_and_shows_them_in_cluster_and_metrics() -> None:
    app = Flask("test_singleton_jobs")
    app.config.update(
        CATGA_CLUSTER_LOCAL_NODE_ENDPOINT="http://localhost:7791", CATGA_CLUSTER_NODE_ID="solo"
    )
    cluster = CatgaCluster(app)
    ran = threading.Event()
    try:
        with app.app_context():

            @cluster.singleton_job("interval", seconds=INTERVAL, id="purge")
            def purge() -> None:
                ran.set()

        assert ran.wait(WAIT)
        client = app.test_client()
        eventually(
            lambda: client.get("/cluster").get_json()["singleton_jobs"][0]["last_completed"],
            "the completed run in /cluster",
        )
        (job,) = client.get("/cluster").get_json()["singleton_jobs"]
        assert job["id"] == "purge" and job["runs"] >= 1
        assert job["last_completed"]["node_id"] == "solo"
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "catga_leader_job_runs_total" in metrics
        assert "catga_singleton_task_starts_total" in metrics
    finally:
        cluster.stop(app)


def test_module_level_registrations_apply_to_every_app_the_extension_joins() -> None:
    """``@cluster.singleton_job`` and ``cluster.add_singleton_task`` at import time, before
    any app exists (the Flask idiom), register on each app's node at init_app."""
    from flask import Flask

    from catga_sync.errors import ConfigError
    from catga_sync.jobs import LeaderJobs
    from catga_sync.singleton import SingletonTasks
    from catga_sync.web.extension import CatgaCluster

    config = ClusterConfig(
        local_node_endpoint="http://127.0.0.1:5999",
        members=("http://127.0.0.1:5999",),
        node_id="solo",
        autostart=False,
    )
    extension = CatgaCluster(config=config)

    @extension.singleton_job("interval", seconds=3600, id="module-level-purge")
    def purge() -> None:
        pass

    def outbox(ctx: object) -> None:
        pass

    assert extension.add_singleton_task(outbox, name="outbox") is outbox
    with pytest.raises(ConfigError, match="max_instances"):
        extension.singleton_job("interval", seconds=1, id="bad", max_instances=3)
    app = Flask("module_level")
    extension.init_app(app)
    node = CatgaCluster.state_of(app).node
    assert [t["name"] for t in SingletonTasks.of(node).tasks()] == ["outbox"]
    assert LeaderJobs.of(node).get("module-level-purge") is not None
    node.stop()
