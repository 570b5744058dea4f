"""A three-member etcd cluster on loopback for the benchmarks, and a client of its JSON gateway.

:mod:`throughput` and :mod:`locks` measure etcd in the same run as catga_sync when ``etcd`` is
on ``PATH`` (Debian: ``apt-get install etcd-server``). The members run with etcd's defaults
(an fsync of the WAL per write, 100 ms heartbeat, 1 s election timeout) except
``--snapshot-count``, set to catga_sync's default ``snapshot_every`` (10,000 entries), each in
a temporary data directory removed when the cluster stops, on ports of their own.

The client speaks the HTTP/JSON gateway that every member serves on its client port
(``POST /v3/kv/put``, ``/v3/lease/grant``, ``/v3/lock/lock``, ``/v3/maintenance/status``;
keys and values base64, 64-bit integers as strings), over one keep-alive connection, as
catga_sync's benchmarks speak HTTP/JSON to the example app.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SNAPSHOT_COUNT = 10_000
INSTALL_HINT = "apt-get install etcd-server"


@dataclass(frozen=True, slots=True)
class Member:
    """One member's name and loopback ports."""

    name: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


def members_on(ports: Sequence[int]) -> list[Member]:
    """Members ``etcd0``, ``etcd1``... on ``ports`` taken two by two (client, peer)."""
    if len(ports) % 2:
        raise ValueError("two ports per member: client, peer")
    return [Member(f"etcd{k}", ports[2 * k], ports[2 * k + 1]) for k in range(len(ports) // 2)]


def member_command(
    member: Member,
    members: Sequence[Member],
    data_dir: Path,
    *,
    token: str,
    snapshot_count: int = SNAPSHOT_COUNT,
    etcd: str = "etcd",
) -> list[str]:
    """The command line that starts ``member`` of a new cluster of ``members``."""
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    return [
        *(etcd, "--name", member.name, "--data-dir", str(data_dir)),
        *("--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url),
        *("--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url),
        *("--initial-cluster", cluster, "--initial-cluster-token", token),
        *("--initial-cluster-state", "new", "--snapshot-count", str(snapshot_count)),
        *("--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"),
    ]


def etcd_version(etcd: str = "etcd") -> str | None:
    """``3.4.23`` from ``etcd --version``, or None when ``etcd`` cannot be run."""
    try:
        out = subprocess.run(
            [etcd, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return None


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class Gateway:
    """One keep-alive connection to one member's HTTP/JSON gateway."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.conn.request(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"etcd {path} answered {response.status}: {data[:200]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def status(self) -> dict[str, Any]:
        return self.call("/v3/maintenance/status", {})

    def put(self, key: str, value: str) -> object:
        """A put of ``key`` (both already base64)."""
        return self.call("/v3/kv/put", {"key": key, "value": value})

    def grant(self, ttl: int) -> str:
        """A new lease of ``ttl`` seconds; its id."""
        return str(self.call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def revoke(self, lease: str) -> None:
        self.call("/v3/lease/revoke", {"ID": lease})

    def lock(self, name: str, lease: str) -> str:
        """Wait for the lock ``name`` (base64) held under ``lease``; the key that holds it."""
        return str(self.call("/v3/lock/lock", {"name": name, "lease": lease})["key"])

    def unlock(self, key: str) -> None:
        self.call("/v3/lock/unlock", {"key": key})

    def close(self) -> None:
        self.conn.close()


class EtcdCluster:
    """Three ``etcd`` processes on loopback, started by :func:`etcd_cluster`."""

    def __init__(self, members: Sequence[Member], root: Path, etcd: str = "etcd") -> None:
        self.members = list(members)
        self.root = root
        self.etcd = etcd
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        token = f"catga-bench-{self.root.name}"
        for member in self.members:
            log = open(self.root / f"{member.name}.log", "ab")  # noqa: SIM115
            command = member_command(
                member, self.members, self.root / member.name, token=token, etcd=self.etcd
            )
            self.processes.append(
                subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            )

    def statuses(self) -> list[dict[str, Any]]:
        answers = []
        for member in self.members:
            gateway = Gateway(member.client_url, timeout=2)
            try:
                answers.append(gateway.status())
            finally:
                gateway.close()
        return answers

    def leader(self) -> Member | None:
        """The member every member names as leader, or None while they do not agree."""
        try:
            statuses = self.statuses()
        except (OSError, RuntimeError, ValueError):
            return None
        leaders = {s.get("leader") for s in statuses}
        if len(leaders) != 1 or None in leaders or "0" in leaders:
            return None
        for member, s in zip(self.members, statuses, strict=True):
            if s["header"]["member_id"] == s["leader"]:
                return member
        return None

    def wait_for_leader(self, timeout: float = 30.0) -> Member:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None:
                return found
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"etcd exited with {process.returncode}: {self.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"no etcd leader after {timeout:g} s: {self.log_tail()}")

    def follower(self) -> Member:
        leader = self.wait_for_leader()
        return next(m for m in self.members if m != leader)

    def log_tail(self, lines: int = 5) -> str:
        tails = []
        for member in self.members:
            path = self.root / f"{member.name}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"{member.name}: " + " | ".join(text))
        return "; ".join(tails)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        wait_or_kill(self.processes, 10)


def wait_or_kill(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait up to ``timeout`` for each of ``processes`` to exit, then SIGKILL it."""
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def etcd_cluster(ports: Sequence[int], etcd: str = "etcd") -> Iterator[EtcdCluster]:
    """A started cluster with a leader, on ``ports`` (two per member); stopped and its data
    removed on the way out, an exception or Ctrl-C included."""
    root = Path(tempfile.mkdtemp(prefix="catga-bench-etcd-"))
    cluster = EtcdCluster(members_on(ports), root, etcd)
    try:
        cluster.start()
        cluster.wait_for_leader()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
