"""Real processes of the example app on loopback ports: start, kill -9, pause, stop."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from helpers.wait import free_ports, poll
except ModuleNotFoundError:  # imported as tests.e2e.harness, from the repository root (benchmarks)
    from tests.helpers.wait import free_ports, poll

__all__ = [
    "ROOT",
    "ExampleCluster",
    "NodeProcess",
    "children_of",
    "cluster_status",
    "free_ports",
    "get_json",
    "leader_among",
    "poll",
    "running_cluster",
    "started",
]

ROOT = Path(__file__).resolve().parents[2]


def children_of(pid: int, command_contains: str | None = None) -> set[int]:
    """The live (not zombie) child processes of ``pid``, those whose command line holds
    ``command_contains`` if given."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            if command_contains and command_contains not in (entry / "cmdline").read_text(
                errors="replace"
            ):
                continue
        except OSError:
            continue
        found.add(int(entry.name))
    return found


def get_json(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except http.client.HTTPException as exc:  # a process killed mid-answer
        raise ConnectionError(f"{url}: {exc!r}") from exc


@dataclass
class NodeProcess:
    name: str
    port: int
    members: list[str]
    state_dir: Path
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://localhost:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "example_flask",
            "--cluster",
            "--port",
            str(self.port),
            "--node-id",
            self.name,
            "--members",
            ",".join(self.members),
            "--state-dir",
            str(self.state_dir),
            *self.extra_args,
        ]

    def start(self) -> None:
        log = open(self.state_dir / f"{self.name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env = {k: v for k, v in env.items() if not k.lower().startswith("cluster__")}
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def status(self) -> dict[str, Any]:
        code, body = get_json(f"{self.url}/cluster")
        assert code == 200, body
        return dict(body)

    def log_text(self) -> str:
        return (self.state_dir / f"{self.name}.log").read_text(errors="replace")


class ExampleCluster:
    def __init__(self, state_dir: Path, size: int = 3, extra_args: list[str] | None = None) -> None:
        ports = free_ports(size)
        members = [f"http://localhost:{p}" for p in ports]
        self.nodes = [
            NodeProcess(f"node{k}", port, members, state_dir, list(extra_args or []))
            for k, port in enumerate(ports)
        ]

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def running(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive()]

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node in self.running():
            with contextlib.suppress(OSError):
                out[node.name] = node.status()
        return out

    def leader(self) -> NodeProcess | None:
        """The node every running node agrees leads, or None."""
        statuses = self.statuses()
        if len(statuses) != len(self.running()):
            return None
        leaders = [n for n in self.running() if statuses[n.name]["role"] == "leader"]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        term = statuses[leader.name]["term"]
        agreed = all(
            s["leader_endpoint"] == leader.endpoint and s["term"] == term for s in statuses.values()
        )
        return leader if agreed else None

    def wait_for_leader(self, timeout: float = 10.0) -> NodeProcess:
        leader: NodeProcess = poll(self.leader, timeout, "one agreed leader")
        return leader

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log_text()[-3000:]}" for n in self.nodes)


@contextlib.contextmanager
def started(cluster: ExampleCluster) -> Iterator[ExampleCluster]:
    """``cluster`` started; its logs printed if the test fails, every process killed at the
    end."""
    cluster.start()
    try:
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


@contextlib.contextmanager
def running_cluster(state_dir: Path, size: int = 3) -> Iterator[ExampleCluster]:
    """A started cluster of the example app with an agreed leader (see :func:`started`)."""
    with started(ExampleCluster(state_dir, size)) as cluster:
        poll(lambda: len(cluster.statuses()) == size, 60, f"all {size} nodes serving")
        cluster.wait_for_leader()
        yield cluster


def cluster_status(node: NodeProcess, timeout: float = 0.5) -> dict[str, Any] | None:
    """The node's ``GET /cluster``, or None when it does not answer (killed, paused)."""
    try:
        code, body = get_json(f"{node.url}/cluster", timeout=timeout)
    except OSError:
        return None
    return body if code == 200 else None


def leader_among(nodes: list[NodeProcess]) -> NodeProcess | None:
    """The one node of ``nodes`` that says it leads (the others may be dead or paused)."""
    leaders = [n for n in nodes if (s := cluster_status(n)) is not None and s["role"] == "leader"]
    return leaders[0] if len(leaders) == 1 else None
