"""Backup and restore: the snapshot document checks itself, ``GET /_catga/admin/snapshot`` is a
signed peer route that any node answers with the leader's snapshot, ``catga snapshot save``
writes it atomically, and ``catga restore`` seeds empty storages from which a new cluster, on
other endpoints, serves the same data. Damaged files and non-empty storages are refused with one
line, writing nothing."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from flask import Flask
from helpers import LocalCluster, free_ports

from catga_sync import CatgaCluster
from catga_sync.cli.main import main
from catga_sync.config import ClusterConfig
from catga_sync.errors import BackupFileError, StorageError
from catga_sync.kv import ReplicatedDict
from catga_sync.node import ClusterNode
from catga_sync.raft import HardState, Membership, Snapshot, SnapshotMeta
from catga_sync.storage import open_storage
from catga_sync.storage.backup import BACKUP_FORMAT, backup_chunks, backup_document, read_backup
from catga_sync.storage.offline import seed_storage
from catga_sync.transport.admin import AdminClient

SECRET = "backup-test-secret-0123456789abcdef"
OLD = Membership(frozenset({"http://old-a:5000", "http://old-b:5000", "http://old-c:5000"}))


def _snapshot(data: bytes = b'{"some":"state"}', index: int = 42, term: int = 3) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, OLD), data)


def catga(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), out=out)
    return code, out.getvalue()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "catga_sync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


# -- the document -------------------------------------------------------------------------------


def test_the_document_round_trips_and_streams_as_the_same_json() -> None:
    snapshot = _snapshot(bytes(range(256)) * 1000)
    document = backup_document(snapshot)
    assert document["format"] == BACKUP_FORMAT == "catga-snapshot/1"
    assert (document["index"], document["term"], document["size"]) == (42, 3, 256_000)
    assert document["membership"] == {"voters": sorted(OLD.voters), "learners": []}
    streamed = b"".join(backup_chunks(snapshot))
    assert json.loads(streamed) == document
    assert read_backup(streamed, "f") == snapshot
    assert read_backup(json.dumps(document), "f") == snapshot


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda text: "", "it is empty"),
        (lambda text: text[: len(text) // 2], "not complete JSON"),
        (lambda text: "[1, 2]", "holds a JSON list"),
        (lambda text: text.replace('"index": 42', '"index": 43'), "checksum does not match"),
        (lambda text: text.replace("catga-snapshot/1", "catga-snapshot/9"), "its format is"),
        (lambda text: text.replace('"size": 16', '"size": 17'), "its header says 17"),
        (lambda text: text.replace('"term": 3', '"term": -1'), "index, term or membership"),
        (lambda text: text.replace('"sha256"', '"sha"'), "lacks the field(s) ['sha256']"),
    ],
)
def test_a_damaged_document_is_refused_naming_the_problem(
    damage: Callable[[str], str], says: str
) -> None:
    text = json.dumps(backup_document(_snapshot()))
    with pytest.raises(BackupFileError, match="nothing was restored") as caught:
        read_backup(damage(text), "backup.json")
    assert says in str(caught.value) and "backup.json" in str(caught.value)


def test_one_changed_byte_of_data_fails_the_checksum() -> None:
    document = backup_document(_snapshot())
    data = bytearray(base64.b64decode(document["data"]))
    data[3] ^= 1
    document["data"] = base64.b64encode(bytes(data)).decode()
    with pytest.raises(BackupFileError, match="checksum"):
        read_backup(document, "f")


# -- seeding a storage ---------------------------------------------------------------------------


def test_seed_writes_the_snapshot_with_the_new_membership(tmp_path: Path) -> None:
    new = Membership(frozenset({"http://new-a:6000", "http://new-b:6000"}))
    seed_storage(open_storage("a", str(tmp_path)), _snapshot(), new)
    storage = open_storage("a", str(tmp_path))
    state = storage.open()
    storage.close()
    assert state.snapshot == Snapshot(SnapshotMeta(42, 3, new), b'{"some":"state"}')
    assert state.hard_state == HardState(3, None, 42) and state.entries == ()


def test_seed_refuses_a_storage_with_state_and_changes_nothing(tmp_path: Path) -> None:
    new = Membership(frozenset({"http://new-a:6000"}))
    seed_storage(open_storage("a", str(tmp_path)), _snapshot(), new)
    with pytest.raises(StorageError, match="already holds Raft state"):
        seed_storage(open_storage("a", str(tmp_path)), _snapshot(b"other", 99, 9), new)
    storage = open_storage("a", str(tmp_path))
    state = storage.open()
    storage.close()
    assert state.snapshot is not None and state.snapshot.meta.index == 42


def test_seed_refuses_a_running_node(tmp_path: Path) -> None:
    running = open_storage("a", str(tmp_path))
    running.open()
    try:
        with pytest.raises(StorageError, match="already running"):
            seed_storage(open_storage("a", str(tmp_path)), _snapshot(), OLD)
    finally:
        running.close()


# -- the route and the commands, on a running cluster --------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        3,
        transport="http",
        secret=SECRET,
        committed_leader=True,
        checked=False,
        setup=lambda node: node.register(ReplicatedDict()),
    ) as cluster:
        kv = cluster.leader().state(ReplicatedDict)
        for k in range(50):
            kv.set(f"k{k}", k)
        yield cluster


def test_a_follower_answers_with_the_leaders_snapshot(cluster: LocalCluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    before = leader.read_barrier(timeout=5)
    status, document = AdminClient(secret=SECRET).request(
        follower.raft_id, "GET", "snapshot", timeout=10
    )
    assert status == 200, document
    snapshot = read_backup(document, "answer")
    assert snapshot.meta.index >= before
    assert snapshot.meta.membership.voters == frozenset(cluster.endpoints)
    state = json.loads(snapshot.data)
    assert state["machines"]["catga.kv"]["data"]["k49"] == 49 and state["sessions"]


def test_the_route_refuses_unsigned_and_bad_requests(cluster: LocalCluster) -> None:
    url = cluster.endpoints[0] + "/_catga/admin/snapshot"
    unsigned = requests.get(url, headers={"X-Catga-Sender": "someone"}, timeout=5)
    assert unsigned.status_code == 401 and unsigned.json()["error"] == "unauthorized"
    admin = AdminClient(secret=SECRET)
    status, answer = admin.request(cluster.endpoints[0], "POST", "snapshot", {}, timeout=5)
    assert status == 405, answer
    status, answer = admin.request(cluster.endpoints[0], "GET", "snapshot", {"x": 1}, timeout=5)
    assert status == 400 and "takes no body" in answer["message"]
    status, answer = admin.request(cluster.endpoints[0], "GET", "snapshot", timeout=5, local=True)
    assert status == 400 and "no query parameters" in answer["message"]
    follower = cluster.follower()
    status, answer = admin.request(follower.raft_id, "GET", "snapshot", timeout=5, forwarded=True)
    assert status == 409 and answer["error"] == "not_leader"  # a forwarded call is not forwarded


def test_save_restore_and_a_new_cluster_on_new_endpoints(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    file = tmp_path / "backup.json"
    code, out = catga(
        "snapshot", "save", str(file), "--cluster", cluster.endpoints[2], "--secret", SECRET
    )
    assert code == 0, out
    assert out.startswith(f"saved {file}: index ") and "bytes of state" in out
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"], "no temporary file left"
    saved = read_backup(file.read_bytes(), str(file))

    endpoints = [f"http://127.0.0.1:{p}" for p in free_ports(3)]
    for k, endpoint in enumerate(endpoints):
        code, out = catga(
            "restore", str(file), "--state", str(tmp_path / f"new{k}"), "--endpoint", endpoint,
            "--members", ",".join(endpoints), "--node-id", f"new{k}",
        )  # fmt: skip
        assert code == 0, out
        assert f"restored node new{k} ({endpoint})" in out and f"index {saved.meta.index}" in out
    nodes = []
    try:
        for k, endpoint in enumerate(endpoints):
            config = ClusterConfig(
                local_node_endpoint=endpoint,
                members=tuple(endpoints),
                node_id=f"new{k}",
                persistent_state_path=str(tmp_path / f"new{k}"),
                election_timeout=timedelta(seconds=0.15),
                heartbeat_interval=timedelta(seconds=0.05),
                secret=SECRET,
            )
            node = ClusterNode(config)
            node.register(ReplicatedDict())
            nodes.append(node.start())
        for node in nodes:  # restored before any election: every node has the data
            assert node.state(ReplicatedDict).local.get("k49") == 49
            assert node.status.members == tuple(sorted(endpoints))
        kv = nodes[0].state(ReplicatedDict)
        kv.set("after", "restore")  # the new cluster elects a leader and goes on
        assert kv.get("k7") == 7 and kv.get("after") == "restore"
    finally:
        for node in nodes:
            node.stop(transfer=False)


def test_restore_refuses_a_truncated_file_writing_nothing(tmp_path: Path) -> None:
    file = tmp_path / "backup.json"
    text = json.dumps(backup_document(_snapshot(b"x" * 5000)))
    file.write_text(text[: len(text) - 100])
    state = tmp_path / "state"
    done = _run("restore", str(file), "--state", str(state), "--endpoint", "http://a:6000")
    assert done.returncode == 1, done.stderr
    assert "is not a usable catga snapshot: it is not complete JSON" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not state.exists(), "nothing written"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--endpoint", "http://a:6000", "--members", "http://b:6000"), "is not one of --members"),
        (("--endpoint", "nope"), "--endpoint: 'nope' is not an endpoint"),
        (("--endpoint", "http://a:6000", "--members", "http://a:6000,ftp://x"), "--members:"),
    ],
)
def test_restore_usage_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "backup.json"
    file.write_text(json.dumps(backup_document(_snapshot())))
    code, _ = catga("restore", str(file), "--state", str(tmp_path / "s"), *args)
    err = capsys.readouterr().err
    assert code == 1 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_restore_refuses_a_non_empty_state_and_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "backup.json"
    file.write_text(json.dumps(backup_document(_snapshot())))
    args = ("--state", str(tmp_path / "s"), "--endpoint", "http://a:6000")
    assert catga("restore", str(file), *args)[0] == 0
    assert catga("restore", str(file), *args)[0] == 1
    err = capsys.readouterr().err
    assert "already holds Raft state" in err and len(err.strip().splitlines()) == 1
    assert catga("restore", str(tmp_path / "missing.json"), *args)[0] == 1
    assert "cannot read" in capsys.readouterr().err


def test_save_errors_are_one_line(cluster: LocalCluster, tmp_path: Path) -> None:
    done = _run("snapshot", "save", str(tmp_path / "b.json"), "--cluster", cluster.endpoints[0])
    assert done.returncode == 1 and "requires signed peer requests" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    missing = tmp_path / "no" / "such" / "dir" / "b.json"
    done = _run("snapshot", "save", str(missing), "--cluster", cluster.endpoints[0],
                "--secret", SECRET)  # fmt: skip
    assert done.returncode == 1 and f"cannot write {missing}" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_flask_cluster_snapshot_save(cluster: LocalCluster, tmp_path: Path) -> None:
    app = Flask("backup-test")
    config = ClusterConfig(
        local_node_endpoint=cluster.endpoints[0], members=tuple(cluster.endpoints), secret=SECRET,
        autostart=False,
    )  # fmt: skip
    CatgaCluster(app, config=config)
    file = tmp_path / "flask.json"
    result = app.test_cli_runner().invoke(args=["cluster", "snapshot", "save", str(file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["file"] == str(file)
    assert read_backup(file.read_bytes(), str(file)).meta.index > 0
