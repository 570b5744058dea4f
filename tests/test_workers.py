"""Local-client workers (catga_sync.web.workers): a node hosted by one worker, used from
another through the hosting worker's loopback port, in one process with real HTTP.

gunicorn itself is in tests/e2e/test_gunicorn_workers.py; here the two "workers" are two Flask
apps of the same node in one process, so that every part of the public API can be driven and
looked at from the client's side: the mirrored status and leadership events, commands and
queries, locks, leader-only work that must stay in the host, and the relayed routes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask

from catga_sync.config import ClusterConfig
from catga_sync.errors import NodeNotRunningError, StorageError
from catga_sync.kv import ReplicatedDict
from catga_sync.locks import LockTable
from catga_sync.node import ClusterNode
from catga_sync.singleton import SingletonTasks, TaskContext
from catga_sync.web.extension import CatgaCluster
from catga_sync.web.worker_files import NO_HOST, HostInfo, worker_paths
from catga_sync.web.worker_link import WorkerLink
from catga_sync.web.workers import WorkerHosting

ENDPOINT = "http://localhost:7431"


def config(state: Path, **options: object) -> ClusterConfig:
    return ClusterConfig(
        local_node_endpoint=ENDPOINT,
        node_id="solo",
        persistent_state_path=str(state),
        election_timeout=0.2,
        heartbeat_interval=0.05,
        **options,  # type: ignore[arg-type]
    )


@dataclass
class Workers:
    host_app: Flask
    host: ClusterNode
    hosting: WorkerHosting
    client_app: Flask
    client: ClusterNode
    link: WorkerLink
    events: list[bool]
    client_runs: list[int]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    cfg = config(tmp_path, autostart=False)
    host_app, client_app = Flask("host"), Flask("client")
    CatgaCluster(host_app, config=cfg, state_machines=[ReplicatedDict])
    CatgaCluster(client_app, config=cfg, state_machines=[ReplicatedDict])
    host = CatgaCluster.state_of(host_app).node
    client = CatgaCluster.state_of(client_app).node
    client_runs: list[int] = []

    def client_task(ctx: TaskContext) -> None:
        client_runs.append(ctx.fencing_token)  # must never run: the client leads nothing
        ctx.wait(60)

    SingletonTasks.of(client).add(client_task, name="client-task")
    events: list[bool] = []
    client.coordinator.on_leadership_change(events.append)
    hosting = WorkerHosting(host)
    hosting.start()
    assert hosting.role == "host"
    # What WorkerHosting does in a sibling worker (here: the same process, so by hand).
    link = WorkerLink(client, hosting.info_path, hosting.lock_path)
    client.serve_through(link)
    link.start()
    CatgaCluster.state_of(client_app).hosting = _ClientRole(hosting.info_path, hosting.lock_path)  # type: ignore[assignment]
    try:
        client.wait_for(lambda s: s.is_leader, 10)
        yield Workers(host_app, host, hosting, client_app, client, link, events, client_runs)
    finally:
        hosting.stop()
        host.stop()
        hosting.release()
        client.end_client_mode()


class _ClientRole:
    """The relay's view of a client worker's hosting (WorkerRelay asks relay_target)."""

    def __init__(self, info_path: Path, lock_path: Path) -> None:
        self.info_path = info_path
        self.lock_path = lock_path

    def relay_target(self) -> HostInfo | None:
        return HostInfo.current(self.info_path, self.lock_path) or NO_HOST


def test_the_client_mirrors_the_hosts_status_and_leadership_events(workers: Workers) -> None:
    client = workers.client
    assert client.status.is_leader and client.coordinator.is_leader
    assert client.coordinator.leader_endpoint == ENDPOINT
    assert not client.running  # it runs nothing itself
    deadline = time.monotonic() + 5
    while workers.events != [True] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers.events == [True]  # the leadership callback, relayed


def test_commands_queries_and_locks_go_through_the_host(workers: Workers) -> None:
    kv = workers.client.state(ReplicatedDict)
    kv.set("k", 41)
    assert kv.get("k") == 41
    assert kv.local.get("k") == 41  # a client holds no state: asked of the host too
    assert workers.host.state(ReplicatedDict).local.get("k") == 41
    with CatgaCluster.state_of(workers.client_app).cluster.lock(
        "jobs", ttl=2, app=workers.client_app
    ) as lease:
        assert lease.token > 0 and lease.is_valid()
        held = workers.host.state(LockTable).describe("jobs")
        assert held is not None and held["token"] == lease.token
        time.sleep(2.3)  # past the TTL: valid only because it was renewed through the host
        assert lease.is_valid()
    assert workers.host.state(LockTable).describe("jobs") is None


def test_leader_only_work_never_runs_in_a_client_worker(workers: Workers) -> None:
    ran = threading.Event()
    SingletonTasks.of(workers.host).add(lambda ctx: (ran.set(), ctx.wait(60)), name="host-task")
    assert ran.wait(5)
    time.sleep(0.3)
    assert workers.client_runs == []
    assert SingletonTasks.of(workers.client).tasks()[0]["state"] != "running"


def test_the_client_relays_the_nodes_routes_to_the_host(workers: Workers) -> None:
    http = workers.client_app.test_client()
    cluster = http.get("/cluster")
    assert cluster.status_code == 200
    body = cluster.get_json()
    assert body["node_id"] == "solo" and body["role"] == "leader"
    assert cluster.headers["X-Catga-Relayed-By"] == str(os.getpid())
    assert http.get("/_catga/client/status").get_json()["is_leader"] is True


def test_a_client_without_a_host_fails_typed_and_in_time(workers: Workers) -> None:
    workers.hosting.stop()
    workers.host.stop()
    workers.hosting.release()  # the workers file goes with it
    started = time.monotonic()
    with pytest.raises(NodeNotRunningError, match="no worker of this host runs it"):
        workers.client.state(ReplicatedDict).with_timeout(0.5).set("k", 1)
    assert time.monotonic() - started < 2.0
    workers.client.wait_for(lambda s: not s.is_leader, 5)
    deadline = time.monotonic() + 5
    while workers.events != [True, False] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers.events == [True, False]
    relayed = workers.client_app.test_client().get("/cluster")
    assert relayed.status_code == 503
    assert relayed.get_json()["error"] == "host_unavailable"


def test_a_node_held_by_a_process_that_is_not_a_sibling_is_refused(tmp_path: Path) -> None:
    node = ClusterNode(config(tmp_path), serve_http=False)
    lock, info = worker_paths(node)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            f'open({str(info)!r}, \'w\').write(\'{{"pid": %d, "ppid": 1, "port": 1, '
            '"token": "t"}\' % os.getpid())\n'
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StorageError, match=f"node 'solo' is already running.*pid {holder.pid}"):
            WorkerHosting(node).start()
        assert not node.running
    finally:
        holder.kill()
        holder.wait()


def test_worker_files_sit_beside_the_state(tmp_path: Path) -> None:
    node = ClusterNode(config(tmp_path), serve_http=False)
    assert worker_paths(node) == (
        tmp_path / "solo.workers.lock",
        tmp_path / "solo.workers.json",
    )
    url = ClusterConfig(
        local_node_endpoint=ENDPOINT,
        node_id="solo",
        persistent_state_path=f"sqlite:///{tmp_path / 'db' / 'x.sqlite3'}",
    )
    assert worker_paths(ClusterNode(url, serve_http=False))[0] == tmp_path / "db/solo.workers.lock"
    server = ClusterConfig(
        local_node_endpoint=ENDPOINT,
        node_id="solo",
        persistent_state_path="postgresql+psycopg://u@db/x",
    )
    lock, _ = worker_paths(ClusterNode(server, serve_http=False))
    assert lock.name.startswith("catga-sync-") and lock.name.endswith(".workers.lock")
    HostInfo(os.getpid(), os.getppid(), 1234, "secret").write(tmp_path / "w.json")
    assert (tmp_path / "w.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "w.json").read_text())["port"] == 1234
    assert HostInfo.read(tmp_path / "w.json") == HostInfo(os.getpid(), os.getppid(), 1234, "secret")


def test_a_lease_and_the_session_carry_on_when_another_worker_hosts_the_node(
    workers: Workers, tmp_path: Path
) -> None:
    kv = workers.client.state(ReplicatedDict)
    kv.set("before", 1)
    held = CatgaCluster.state_of(workers.client_app).cluster.lock(
        "across", ttl=4, app=workers.client_app
    )
    with held as lease:
        # The hosting worker goes away; another one (here: a new node of the same state, in
        # this process) takes the node, on a new port with a new token.
        workers.hosting.stop()
        workers.host.stop()
        workers.hosting.release()
        successor = ClusterNode(config(tmp_path), serve_http=False)
        successor.register(ReplicatedDict())
        hosting = WorkerHosting(successor)
        hosting.start()
        try:
            assert hosting.role == "host"
            workers.client.wait_for(lambda s: s.is_leader, 10)
            time.sleep(4.2)  # past the TTL: renewed through the new host
            assert lease.is_valid(), lease.lost_reason
            assert kv.get("before") == 1
            kv.set("after", 2)  # the same client session, through the new host
            assert successor.state(ReplicatedDict).local.get("after") == 2
        finally:
            lease.release()
            hosting.stop()
            successor.stop()
            hosting.release()


def test_a_stale_workers_file_names_no_host(tmp_path: Path) -> None:
    node = ClusterNode(config(tmp_path), serve_http=False)
    lock, info = worker_paths(node)
    # Left behind by an unclean stop, naming a live process that holds no lock (this one).
    HostInfo(os.getpid(), os.getppid(), 4321, "old").write(info)
    assert HostInfo.current(info, lock) is None
    hosting = WorkerHosting(node)
    hosting.start()
    try:
        assert hosting.role == "host"  # not "direct": the file is not proof of a holder
        current = HostInfo.current(info, lock)
        assert current is not None and current.port not in (0, 4321)
    finally:
        hosting.stop()
        node.stop()
        hosting.release()
    assert not info.exists()


def test_the_relay_passes_chunked_bodies_head_and_refuses_large_ones(workers: Workers) -> None:
    http = workers.client_app.test_client()
    workers.client.state(ReplicatedDict).set("c", 3)
    body = json.dumps({"machine": ReplicatedDict.name, "query": "get", "args": ["c"]}).encode()
    chunked = http.post(
        "/_catga/client/queries",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        environ_overrides={"HTTP_TRANSFER_ENCODING": "chunked"},
    )
    assert chunked.status_code == 200, chunked.get_data(as_text=True)
    assert chunked.get_json()["outcome"]["result"] == 3
    got, head = http.get("/livez"), http.head("/livez")  # a body that does not change
    assert head.status_code == 200 and head.headers["X-Catga-Relayed-By"]
    assert head.get_data() == b""
    assert int(head.headers["Content-Length"]) == len(got.get_data()) > 0
    limit = max(CatgaCluster.state_of(workers.client_app).config.max_message_bytes, 1 << 20)
    large = http.post(
        "/_catga/raft", data=b"x" * (limit + 1), content_type="application/octet-stream"
    )
    assert large.status_code == 413
    assert large.get_json()["error"] == "body_too_large"


def test_leadership_events_keep_their_order_across_lives(tmp_path: Path) -> None:
    from catga_sync.raft import Role
    from catga_sync.runtime.leadership import LeadershipChange

    node = ClusterNode(config(tmp_path), serve_http=False)
    seen: list[bool] = []

    def slow(is_leader: bool) -> None:
        time.sleep(0.05 if not is_leader else 0.0)
        seen.append(is_leader)

    coordinator = node.coordinator
    coordinator.on_leadership_change(slow)
    status = dataclasses.replace(node.status, running=True, role=Role.LEADER, term=1)
    coordinator._on_leadership(LeadershipChange(None, 1, False, status))  # elected (mirror)
    coordinator._on_leadership(LeadershipChange(1, None, True, status))  # the host is gone
    coordinator._on_leadership(LeadershipChange(None, None, True, status))  # gone again
    coordinator._on_leadership(LeadershipChange(None, 2, False, status))  # leads here now
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [True, False, True]
