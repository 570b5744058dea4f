"""End to end under gunicorn: three example nodes, each a gunicorn master with one threaded
worker (``example_flask/gunicorn.conf.py``). SIGTERM to the leader's master hands leadership
over from the worker's ``worker_exit`` hook; kill -9 leaves the cluster to an election."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import ROOT, ExampleCluster, NodeProcess, cluster_status, poll

pytestmark = pytest.mark.e2e

CONF = ROOT / "example_flask" / "gunicorn.conf.py"


class GunicornNode(NodeProcess):
    """One node: a gunicorn master in its own process group, configured by ``Cluster__*``."""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(CONF),
            "-b",
            f"127.0.0.1:{self.port}",
            "example_flask:create_app()",
        ]

    def start(self) -> None:
        log = open(self.state_dir / f"{self.name}.log", "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
        env.update(
            PYTHONPATH=str(ROOT),
            Cluster__LocalNodeEndpoint=self.endpoint,
            Cluster__NodeId=self.name,
            Cluster__PersistentStatePath=str(self.state_dir),
        )
        for k, member in enumerate(m for m in self.members if m != self.endpoint):
            env[f"Cluster__Members__{k}"] = member
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the master and its worker: one group to kill -9
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ExampleCluster]:
    c = ExampleCluster(tmp_path)
    c.nodes = [GunicornNode(n.name, n.port, n.members, n.state_dir) for n in c.nodes]
    c.start()
    try:
        poll(lambda: len(c.statuses()) == 3, 60, "all three gunicorn nodes serving")
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


def _new_leader(old: NodeProcess, others: list[NodeProcess], term: int) -> NodeProcess | None:
    for node in others:
        status = cluster_status(node, timeout=0.3)
        if status is not None and status["role"] == "leader" and status["term"] > term:
            return node
    return None


def test_sigterm_to_the_leaders_gunicorn_hands_leadership_over(cluster: ExampleCluster) -> None:
    old = cluster.wait_for_leader(timeout=10)
    term = old.status()["term"]
    others = [n for n in cluster if n is not old]
    started = time.monotonic()
    old.signal(signal.SIGTERM)
    new = poll(lambda: _new_leader(old, others, term), 10, "a new leader after SIGTERM")
    elapsed = time.monotonic() - started
    assert old.process is not None and old.process.wait(30) == 0
    log = old.log_text()
    # The log names a peer by its node id once it has heard from it, else by its endpoint.
    handed = (f"node {old.name} handed leadership to {to}" for to in (new.name, new.endpoint))
    assert any(line in log for line in handed), log[-3000:]
    assert f"node {old.name} stopped" in log
    print(f"SIGTERM: new leader {new.name} after {elapsed * 1e3:.0f} ms")


def test_kill_9_of_the_leaders_gunicorn_leaves_it_to_an_election(
    cluster: ExampleCluster,
) -> None:
    old = cluster.wait_for_leader(timeout=10)
    term = old.status()["term"]
    others = [n for n in cluster if n is not old]
    started = time.monotonic()
    old.kill()
    new = poll(lambda: _new_leader(old, others, term), 10, "a new leader after kill -9")
    elapsed = time.monotonic() - started
    assert "handed leadership" not in old.log_text()
    print(f"kill -9: new leader {new.name} after {elapsed * 1e3:.0f} ms")
