"""Throwaway database servers of the tests' own, to restart under running nodes.

Each server is the installed binaries on a temporary data directory and a free loopback port,
so stopping and restarting it disturbs nothing else (the shared servers of ``tox -e postgres``
and ``tox -e mysql`` stay up). A missing binary or driver skips the test, saying what to
install. As root, the server runs as its own system user (both refuse to run as root), which
is why the data lives in a directory of its own, not under root's pytest ``tmp_path``.

Also here: the three-node cluster the restart tests run on that server, and the writer that
records what was acknowledged.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import pytest
from helpers import free_ports, poll
from helpers.wrapping import StorageWrapper

from catga_sync import ClusterConfig, ClusterNode, ReplicatedDict
from catga_sync.errors import CatgaError
from catga_sync.storage import open_storage

WAIT = 20.0


class Server(Protocol):
    """A database server the test may stop and start again, on the same port and data."""

    name: str
    url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _as_user(user: str | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


class PostgresServer:
    """``initdb`` and ``pg_ctl``: a PostgreSQL cluster with trust authentication."""

    name = "postgres"

    def __init__(self, root: Path) -> None:
        pytest.importorskip(
            "psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'"
        )
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        pg_ctl = found[-1] if found else shutil.which("pg_ctl")
        if pg_ctl is None:
            pytest.skip("no PostgreSQL binaries installed (.ci/run installs them)")
        self.bin = Path(pg_ctl).parent
        self.root = root
        self.data = root / "data"
        self.port = free_ports(1)[0]
        self.user = "postgres" if os.geteuid() == 0 else None
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = _as_user(self.user, [str(self.bin / args[0]), *args[1:]])
        done = subprocess.run(command, capture_output=True, text=True, cwd="/tmp", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def kill(self) -> None:
        with contextlib.suppress(AssertionError):  # unless already stopped
            self.stop("immediate")


class MariaDbServer:
    """``mariadb-install-db`` (or ``mysql_install_db``) and ``mariadbd`` (or ``mysqld``): root
    without a password on 127.0.0.1, a database ``test``. Stopped with SIGTERM, as
    ``systemctl stop`` does: a clean shutdown that ends every client session."""

    name = "mysql"

    # Small and quick: the server holds a few hundred rows, and only the binary log's absence
    # and the buffer pool's size matter for how fast it starts.
    OPTIONS = ("--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M")

    def __init__(self, root: Path) -> None:
        pytest.importorskip("pymysql", reason="PyMySQL is not installed: pip install -e '.[mysql]'")
        server = shutil.which("mariadbd") or shutil.which("mysqld")
        for sbin in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld"):
            server = server or (sbin if os.access(sbin, os.X_OK) else None)
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if server is None or install is None:
            pytest.skip("no MariaDB server binaries installed (apt-get install mariadb-server)")
        self.server, self.install = server, install
        self.root = root
        self.data = root / "data"
        self.port = free_ports(1)[0]
        self.user = "mysql" if os.geteuid() == 0 else None
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/test"
        self.process: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        # --no-defaults: the machine's my.cnf (a system server's socket, port, datadir) stays
        # out of it; it must come first.
        command = [self.install, "--no-defaults", f"--datadir={self.data}", *self.OPTIONS]
        command += ["--auth-root-authentication-method=normal", "--skip-test-db"]
        if self.user is not None:
            command.append(f"--user={self.user}")
        done = subprocess.run(command, capture_output=True, text=True, cwd="/tmp", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        self.start()
        self._sql("CREATE DATABASE test")

    def start(self) -> None:
        command = [
            self.server,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.root / 'sock'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.root / 'pid'}",
            f"--log-error={self.root / 'log'}",
            *self.OPTIONS,
        ]
        if self.user is not None:
            command.append(f"--user={self.user}")
        # Before it opens its --log-error file the server writes to stderr: keep that there too.
        with open(self.root / "stderr", "ab") as stderr:
            self.process = subprocess.Popen(command, cwd="/tmp", stderr=stderr)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = (self.root / "log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"mariadbd did not start:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(60)

    def _answers(self) -> bool:
        try:
            self._sql("SELECT 1")
        except Exception:  # not listening yet, or still starting up
            return False
        return True

    def _sql(self, statement: str) -> None:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
        finally:
            conn.close()


@contextmanager
def throwaway(kind: type[PostgresServer] | type[MariaDbServer]) -> Iterator[Server]:
    """A running server of ``kind`` for the duration of the block, then gone with its data."""
    root = Path(tempfile.mkdtemp(prefix=f"catga-{kind.name}-"))
    try:
        server = kind(root)
        if server.user is not None:
            shutil.chown(root, server.user)
        server.init()
        if isinstance(server, PostgresServer):
            server.start()
        try:
            yield server
        finally:
            server.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Gate(StorageWrapper):
    """A storage whose persists wait while the gate is shut, as if the database hung: lets a
    test order what happens while a node cannot write."""

    def __init__(self, inner: object) -> None:
        super().__init__(inner)  # type: ignore[arg-type]
        self.open_ = threading.Event()
        self.open_.set()
        self.waiting = threading.Event()

    def before_persist(self) -> None:
        if not self.open_.is_set():
            self.waiting.set()
            self.open_.wait()


def three_nodes(server: Server, name: str, gated: bool = False) -> list[ClusterNode]:
    """Three started nodes ``<name>0..2`` keeping their state in ``server``; with ``gated``,
    each node's storage is a :class:`Gate` (``node._storage``)."""
    endpoints = [f"http://127.0.0.1:{p}" for p in free_ports(3)]
    nodes = []
    for k, endpoint in enumerate(endpoints):
        config = ClusterConfig(
            local_node_endpoint=endpoint,
            members=tuple(endpoints),
            node_id=f"{name}{k}",
            persistent_state_path=server.url,
            election_timeout=timedelta(milliseconds=300),
            heartbeat_interval=timedelta(milliseconds=100),
        )
        storage = Gate(open_storage(config.node_id, server.url)) if gated else None
        node = ClusterNode(config, storage=storage)
        node.register(ReplicatedDict())
        nodes.append(node)
    for node in nodes:
        node.start()
    poll(lambda: any(n.status.is_leader for n in nodes), WAIT, "a leader")
    return nodes


class Writer:
    """A thread that sets ``k<i> = i`` through the nodes in turn and records what was
    acknowledged (a write that failed may or may not have happened; it is not recorded)."""

    def __init__(self, nodes: list[ClusterNode]) -> None:
        self.nodes = nodes
        self.acknowledged: dict[str, int] = {}
        self.acknowledged_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            node = self.nodes[k % len(self.nodes)]
            if node.running:
                try:
                    node.state(ReplicatedDict, timeout=5).set(f"k{k}", k)
                    self.acknowledged[f"k{k}"] = k
                    self.acknowledged_at.append(time.monotonic())
                except CatgaError:  # no leader, a timeout: its outcome may be unknown
                    pass
            k += 1

    def wait_for(self, more: int, what: str, timeout: float = WAIT) -> None:
        count = len(self.acknowledged)
        poll(lambda: len(self.acknowledged) >= count + more, timeout, what)

    def first_after(self, moment: float) -> float:
        """Seconds from ``moment`` to the first write acknowledged after it."""
        return next(t for t in self.acknowledged_at if t > moment) - moment


def check_nothing_lost(nodes: list[ClusterNode], acknowledged: dict[str, int]) -> None:
    """Every acknowledged write is on every one of ``nodes`` (running ones)."""
    leader = poll(lambda: next((n for n in nodes if n.status.is_leader), None), WAIT, "a leader")
    index = leader.read_barrier(timeout=WAIT)
    for node in nodes:
        node.wait_for(lambda s: s.last_applied >= index, WAIT)
        local = node.state(ReplicatedDict).local
        assert {key: local.get(key) for key in acknowledged} == acknowledged


def stop_all(nodes: list[ClusterNode]) -> None:
    for node in nodes:
        node.stop(transfer=False)


def outage(server: Server, nodes: list[ClusterNode], seconds: float) -> tuple[float, float]:
    """Stop the server, wait until a node notices, keep it down ``seconds`` more, start it
    again; return (how long it was down, the moment it answered again)."""
    down = time.monotonic()
    server.stop()
    poll(lambda: any(n.status.storage_problem for n in nodes), WAIT, "a node noticing")
    time.sleep(seconds)
    server.start()
    up = time.monotonic()
    return up - down, up


def restart_under_three_nodes(server: Server, name: str, report: Callable[[str], None]) -> None:
    """The restart scenario: three nodes under a stream of writes, the server down about 2 s
    and back. No node stops, every acknowledged write is on every node, and each node holds its
    ownership lock again (a second open of its state is refused)."""
    nodes = three_nodes(server, name)
    try:
        with Writer(nodes) as writer:
            writer.wait_for(20, "writes before the restart")
            down_for, up = outage(server, nodes, 2.0)
            poll(lambda: all(n.status.storage_problem is None for n in nodes), WAIT, "all back")
            back = time.monotonic() - up
            writer.wait_for(20, "writes after the restart", 2 * WAIT)
        assert all(n.running for n in nodes), [n.status for n in nodes]
        report(
            f"{server.name}: down {down_for:.2f} s; first write acknowledged "
            f"{writer.first_after(up):.2f} s after the restart; all nodes back within {back:.2f} s"
        )
        check_nothing_lost(nodes, writer.acknowledged)
        for node in nodes:
            with pytest.raises(CatgaError, match="already running"):
                open_storage(node.node_id, server.url).open()
    finally:
        stop_all(nodes)
