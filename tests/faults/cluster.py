"""The example app's nodes as real processes, each on its own host of a :class:`Network`.

The same processes as the end-to-end tests (``python -m example_flask --cluster``, durable
SQLite state), started through ``ip netns exec`` so that each binds its own address; the
test's clients reach them from the root namespace over the bridge, which no fault touches.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.harness import ExampleCluster, NodeProcess, cluster_status, poll

from .history import TaskStart
from .netns import Host, Network

PORT = 5000
ELECTION_TIMEOUT = 0.3
"""Seconds. Twice the library's default: these runs share two cores with five processes,
and the question here is safety under partitions, not the fastest failover."""
HEARTBEAT_INTERVAL = 0.075

TASK_STARTED = re.compile(r"OutboxProcessor started on the leader \(fencing token (\d+)\)")


class HostedNode(NodeProcess):
    """A node process inside its host's namespace, at ``http://<address>:5000``."""

    host: Host

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{PORT}"

    @property
    def endpoint(self) -> str:
        return self.url

    def command(self) -> list[str]:
        host = self.host.address
        return [
            *self.host.exec_prefix(),
            *super().command(),
            "--host",
            host,
            "--advertise-host",
            host,
            "--election-timeout",
            str(ELECTION_TIMEOUT),
            "--heartbeat-interval",
            str(HEARTBEAT_INTERVAL),
        ]

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def task_starts(self) -> list[TaskStart]:
        return [TaskStart(self.name, int(m)) for m in TASK_STARTED.findall(self.log_text())]


class FaultCluster(ExampleCluster):
    """``size`` nodes on ``network``; node k is ``node{k}`` on host ``node{k}``."""

    nodes: list[HostedNode]  # type: ignore[assignment]

    def __init__(self, network: Network, state_dir: Path, size: int) -> None:
        self.network = network
        members = [f"http://{network.hosts[f'node{k}'].address}:{PORT}" for k in range(size)]
        self.nodes = []
        for k in range(size):
            node = HostedNode(f"node{k}", PORT, members, state_dir)
            node.host = network.hosts[node.name]
            self.nodes.append(node)

    def by_name(self, name: str) -> HostedNode:
        return next(n for n in self.nodes if n.name == name)

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def current_leader(self) -> HostedNode | None:
        """The node of the highest term that says it leads (others may still think so)."""
        best: tuple[int, HostedNode] | None = None
        for node in self.running():
            status = cluster_status(node)
            if status and status["role"] == "leader" and (best is None or status["term"] > best[0]):
                best = (status["term"], node)
        return best[1] if best else None

    def converged(self) -> dict[str, Any] | None:
        """When every node runs, answers, and agrees on one leader, one term and one applied
        index: that common view; else None."""
        statuses = []
        for node in self.nodes:
            status = cluster_status(node) if node.alive() else None
            if status is None or not status["running"]:
                return None
            statuses.append(status)
        views = {
            (s["leader_endpoint"], s["term"], s["commit_index"], s["last_applied"])
            for s in statuses
        }
        if len(views) != 1:
            return None
        leader, term, commit, applied = views.pop()
        if leader is None or commit != applied:
            return None
        return {"leader": leader, "term": term, "applied": applied}

    def task_starts(self) -> list[TaskStart]:
        return [start for node in self.nodes for start in node.task_starts()]

    def heal_everything(self) -> None:
        """Links whole, paused nodes resumed, killed nodes restarted."""
        self.network.heal()
        for node in self.nodes:
            if node.alive():
                node.resume()
            else:
                node.start()


@contextlib.contextmanager
def running_fault_cluster(state_dir: Path, size: int = 3) -> Iterator[FaultCluster]:
    """A network of ``size`` hosts, a node on each, an agreed leader; logs printed on failure,
    processes killed and the network removed at the end."""
    with Network([f"node{k}" for k in range(size)]) as network:
        cluster = FaultCluster(network, state_dir, size)
        cluster.start()
        try:
            poll(lambda: len(cluster.statuses()) == size, 60, f"all {size} nodes serving")
            cluster.wait_for_leader(timeout=20)
            yield cluster
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.stop()  # SIGKILL ends paused processes too
