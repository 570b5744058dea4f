"""End to end: three example nodes, each under real gunicorn with three workers.

In each node's set of workers one hosts the node and the other two are its local clients
(catga_sync.web.workers). Writes, linearizable reads and locks work through every worker; the
peers see one node per endpoint; a leader-gated job that writes its fire times into a shared
SQL table runs once per fire time across all nine workers; kill -9 of a hosting worker hands
the node to a sibling worker, and the cluster carries on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .harness import ROOT, ExampleCluster, NodeProcess, children_of, cluster_status, poll
from .test_gunicorn_cluster import GunicornNode

pytestmark = pytest.mark.e2e

WORKERS = 3
FIRE_SECONDS = 0.5


class WorkersNode(GunicornNode):
    """A gunicorn node with ``-w 3`` whose example app also runs the fire-time job."""

    fires_url = ""

    def command(self) -> list[str]:
        return [*super().command()[:-1], "-w", str(WORKERS), super().command()[-1]]

    def start(self) -> None:
        os.environ["EXAMPLE_FIRES_URL"] = self.fires_url
        os.environ["EXAMPLE_FIRES_SECONDS"] = str(FIRE_SECONDS)
        try:
            super().start()
        finally:
            del os.environ["EXAMPLE_FIRES_URL"], os.environ["EXAMPLE_FIRES_SECONDS"]

    @property
    def master(self) -> int:
        assert self.process is not None
        return self.process.pid

    def workers(self) -> set[int]:
        """The pids of the master's live worker processes."""
        return children_of(self.master)

    def host(self) -> int | None:
        """The pid the workers file names as hosting the node, if it is a live worker."""
        try:
            pid = int(json.loads((self.state_dir / f"{self.name}.workers.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        return pid if pid in self.workers() else None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ExampleCluster]:
    c = ExampleCluster(tmp_path)
    nodes = []
    for n in c.nodes:
        node = WorkersNode(n.name, n.port, n.members, n.state_dir)
        node.fires_url = f"sqlite:///{tmp_path / 'fires.sqlite3'}"
        nodes.append(node)
    c.nodes = list(nodes)
    c.start()
    try:
        poll(lambda: len(c.statuses()) == 3, 90, "all three gunicorn nodes serving")
        for node in nodes:
            poll(lambda n=node: len(n.workers()) == WORKERS and n.host(), 60, "a hosting worker")
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


def log_with(node: NodeProcess, lines: list[str]) -> str | None:
    """The node's log once it holds every one of ``lines``."""
    text = node.log_text()
    return text if all(line in text for line in lines) else None


def served_by(response: requests.Response) -> int:
    return int(response.headers["X-Served-By"].rsplit("/", 1)[1])


def through_every_worker(
    node: WorkersNode, request: Callable[[requests.Session], requests.Response], what: str
) -> list[requests.Response]:
    """Send ``request`` on new connections until each of the node's workers answered one."""
    answers: dict[int, requests.Response] = {}
    workers = node.workers()
    deadline = time.monotonic() + 60
    while set(answers) != workers:
        assert time.monotonic() < deadline, f"{what}: only workers {sorted(answers)} answered"
        with requests.Session() as session:  # a new connection: gunicorn picks a worker
            response = request(session)
        assert response.status_code < 300, (what, response.status_code, response.text)
        answers[served_by(response)] = response
    return list(answers.values())


def fire_runs(cluster: ExampleCluster) -> list[dict[str, Any]]:
    from example_flask import fires

    url = next(iter(cluster.nodes)).fires_url  # type: ignore[attr-defined]
    return fires.runs(url)


def check_every_worker_serves(node: WorkersNode) -> None:
    """Writes, linearizable reads and locks, answered by each worker of ``node``."""
    url = node.url
    created = through_every_worker(
        node,
        lambda s: s.post(f"{url}/orders", json={"customer": "ada", "amount": 2}),
        f"POST /orders on {node.name}",
    )
    order_id = created[0].json()["id"]
    read = through_every_worker(node, lambda s: s.get(f"{url}/orders/{order_id}"), "GET order")
    assert all(r.json()["id"] == order_id for r in read)

    def lock_and_release(s: requests.Session) -> requests.Response:
        got = s.post(f"{url}/locks/report", json={"ttl": 5, "wait": 5})
        assert got.status_code == 200, got.text
        released = s.delete(f"{url}/locks/report", json={"token": got.json()["token"]})
        assert released.status_code == 200, released.text
        return got

    tokens = [r.json()["token"] for r in through_every_worker(node, lock_and_release, "lock")]
    assert len(set(tokens)) == len(tokens)  # a fresh fencing token per grant

    def create_and_ship(s: requests.Session) -> requests.Response:
        # The guide's flow: a mediator command, with ForwardToLeaderBehavior, from this worker.
        order = s.post(f"{url}/orders", json={"customer": "cy", "amount": 5}).json()["id"]
        return s.post(f"{url}/orders/{order}/ship")

    shipped = through_every_worker(node, create_and_ship, "ship")
    assert {r.json()["status"] for r in shipped} == {"shipped"}


def test_one_host_per_node_and_every_worker_serves_the_example(
    cluster: ExampleCluster,
) -> None:
    nodes: list[WorkersNode] = list(cluster.nodes)  # type: ignore[arg-type]
    for node in nodes:
        host = node.host()
        assert host is not None
        clients = node.workers() - {host}
        assert len(clients) == WORKERS - 1
        lines = [f"worker {pid} is a local client of node {node.name}" for pid in clients]
        log = poll(lambda n=node, ls=lines: log_with(n, ls), 30, f"{node.name}'s clients ready")
        assert log.count(f"hosts node {node.name}") == 1, log[-2000:]
    leader = cluster.wait_for_leader(timeout=15)
    follower = next(n for n in nodes if n is not leader)
    for node in (leader, follower):
        assert isinstance(node, WorkersNode)
        check_every_worker_serves(node)
    # Every worker of a node reports the same node: its status comes from the hosting worker.
    for node in nodes:
        statuses = {cluster_status(node)["node_id"] for _ in range(6)}  # type: ignore[index]
        assert statuses == {node.name}


def test_the_leader_gated_job_runs_once_per_fire_time_across_nine_workers(
    cluster: ExampleCluster,
) -> None:
    cluster.wait_for_leader(timeout=15)
    poll(lambda: len(fire_runs(cluster)) >= 12, 30, "twelve fire times recorded")
    runs = fire_runs(cluster)
    counts = Counter(r["fire_time"] for r in runs)
    assert max(counts.values()) == 1, [t for t, n in counts.items() if n > 1]
    leader = cluster.wait_for_leader(timeout=5)
    assert isinstance(leader, WorkersNode)
    latest = runs[-6:]
    assert {r["node"] for r in latest} == {leader.name}
    assert {r["pid"] for r in latest} == {leader.host()}  # the hosting worker, no other


def test_kill_9_of_a_hosting_worker_hands_the_node_to_a_sibling(
    cluster: ExampleCluster,
) -> None:
    nodes: list[WorkersNode] = list(cluster.nodes)  # type: ignore[arg-type]
    leader = cluster.wait_for_leader(timeout=15)
    for victim in [n for n in nodes if n is not leader] + [leader]:
        assert isinstance(victim, WorkersNode)
        host = victim.host()
        assert host is not None
        siblings = victim.workers() - {host}
        killed = time.monotonic()
        os.kill(host, signal.SIGKILL)
        successor = poll(
            lambda v=victim, h=host: (v.host() or 0) not in (0, h) and v.host(), 20, "a new host"
        )
        took = time.monotonic() - killed
        assert successor in siblings  # a worker that was already there, not the replacement
        print(f"{victim.name}: worker {successor} hosts the node {took * 1e3:.0f} ms after kill")
        # The cluster carries on, through every worker of the node that lost its host.
        through_every_worker(
            victim,
            lambda s, v=victim: s.post(f"{v.url}/orders", json={"customer": "bo", "amount": 1}),
            f"POST /orders on {victim.name} after the kill",
        )
    # Gated jobs run at least once per fire time (docs/leader-jobs.rst): the leader's host,
    # killed between a run and its record in the log, leaves that one fire time to its
    # successor. Never more than that one repeat.
    assert max(Counter(r["fire_time"] for r in fire_runs(cluster)).values()) <= 2


def test_sigterm_to_the_leaders_gunicorn_hands_over_and_restarts_nothing(
    cluster: ExampleCluster,
) -> None:
    old = cluster.wait_for_leader(timeout=15)
    assert old.terminate(30) == 0
    log = old.log_text()
    assert f"node {old.name} handed leadership to" in log, log[-3000:]
    # No worker on its way out took the node over when the hosting worker let it go.
    assert "takes over" not in log, log[-3000:]
    cluster.wait_for_leader(timeout=15)


def test_kill_9_of_the_leaders_whole_gunicorn_fails_over(cluster: ExampleCluster) -> None:
    old = cluster.wait_for_leader(timeout=15)
    term = old.status()["term"]
    old.kill()  # the master and its three workers
    others = [n for n in cluster if n is not old]

    def new_leader() -> NodeProcess | None:
        for node in others:
            status = cluster_status(node, timeout=0.5)
            if status is not None and status["role"] == "leader" and status["term"] > term:
                return node
        return None

    new = poll(new_leader, 15, "a new leader after the leader's gunicorn was killed")
    response = requests.post(f"{new.url}/orders", json={"customer": "cy", "amount": 3}, timeout=10)
    assert response.status_code == 201, response.text


def test_preload_is_refused_with_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
    env.update(
        PYTHONPATH=str(ROOT),
        Cluster__LocalNodeEndpoint="http://127.0.0.1:1",
        Cluster__NodeId="solo",
        Cluster__PersistentStatePath=str(tmp_path),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "example_flask" / "gunicorn.conf.py"),
            "--preload",
            "-b",
            "127.0.0.1:0",
            "example_flask:create_app()",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "gunicorn --preload loads the app in the master" in done.stderr + done.stdout
    assert "Remove --preload" in done.stderr + done.stdout
    assert not (tmp_path / "solo.sqlite3").exists()  # no node ran in the master
