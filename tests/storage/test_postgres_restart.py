"""A PostgreSQL server restarted under three running nodes that keep their state in it.

The test starts a throwaway server of its own (the installed binaries, a temporary data
directory, a free port), so restarting it disturbs nothing else. Before the fix, one fast
restart (about 3 s down) stopped every node for good (each logged "Raft loop failed, node
stopped"); now each waits for the database, acknowledging nothing meanwhile, and goes on.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import free_ports, poll

from catga_sync import ClusterConfig, ClusterNode, ReplicatedDict
from catga_sync.errors import CatgaError

pytest.importorskip("psycopg")

WAIT = 20.0


class Server:
    def __init__(self, root: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        pg_ctl = found[-1] if found else shutil.which("pg_ctl")
        if pg_ctl is None:
            pytest.skip("no PostgreSQL binaries installed (.ci/run installs them)")
        self.bin = Path(pg_ctl).parent
        self.root = root
        self.data = root / "data"
        self.port = free_ports(1)[0]
        self.user = "postgres" if os.geteuid() == 0 else None  # postgres refuses to run as root

    def run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd="/tmp", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def init(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def server() -> Iterator[Server]:
    # Not under tmp_path: the server runs as user postgres, who cannot enter root's pytest dir.
    root = Path(tempfile.mkdtemp(prefix="catga-pg-"))
    srv = Server(root)
    if srv.user is not None:
        shutil.chown(root, srv.user)
    try:
        srv.init()
        srv.start()
        yield srv
    finally:
        with contextlib.suppress(AssertionError):
            srv.stop("immediate")  # unless already stopped
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_restarted_under_three_nodes_stops_none_and_loses_nothing(
    server: Server,
) -> None:
    endpoints = [f"http://127.0.0.1:{p}" for p in free_ports(3)]
    nodes = []
    for k, endpoint in enumerate(endpoints):
        config = ClusterConfig(
            local_node_endpoint=endpoint,
            members=tuple(endpoints),
            node_id=f"pg{k}",
            persistent_state_path=server.url,
            election_timeout=timedelta(milliseconds=300),
            heartbeat_interval=timedelta(milliseconds=100),
        )
        node = ClusterNode(config)
        node.register(ReplicatedDict())
        nodes.append(node)
    for node in nodes:
        node.start()
    acknowledged: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def write() -> None:
        k = 0
        while not stop.is_set():
            node = nodes[k % 3]
            try:
                node.state(ReplicatedDict, timeout=5).set(f"k{k}", k)
                acknowledged[f"k{k}"] = k
            except CatgaError as exc:  # no leader, a timeout: its outcome may be unknown
                failures.append(type(exc).__name__)
            k += 1

    try:
        poll(lambda: any(n.status.is_leader for n in nodes), WAIT, "a leader")
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        poll(lambda: len(acknowledged) >= 20, WAIT, "writes before the restart")
        server.stop("fast")
        poll(
            lambda: any(n.status.storage_problem for n in nodes),
            WAIT,
            "a node noticing the database is gone",
        )
        time.sleep(2)  # the database stays down a while, as in a restart
        server.start()
        count = len(acknowledged)
        poll(lambda: len(acknowledged) >= count + 20, 2 * WAIT, "writes after the restart")
        stop.set()
        writer.join(WAIT)
        assert all(n.running for n in nodes), [n.status for n in nodes]
        poll(lambda: all(n.status.storage_problem is None for n in nodes), WAIT, "all back")
        leader = next(n for n in nodes if n.status.is_leader)
        index = leader.read_barrier(timeout=WAIT)
        for node in nodes:
            node.wait_for(lambda s: s.last_applied >= index, WAIT)
            local = node.state(ReplicatedDict).local
            assert {key: local.get(key) for key in acknowledged} == acknowledged
    finally:
        stop.set()
        for node in nodes:
            node.stop(transfer=False)
