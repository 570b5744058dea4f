"""The ``catga`` command line (``python -m catga_sync``) and ``flask cluster``: status,
members list/add/remove, transfer-leader; one-line errors and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from helpers import LocalCluster, free_ports

from catga_sync import CatgaCluster
from catga_sync.cli.main import main
from catga_sync.config import ClusterConfig
from catga_sync.node import ClusterNode

SECRET = "cli-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # Unchecked: the checker would blame the inline replies of the joiner (see
    # test_admin_routes); test_members_node runs the same changes checked.
    with LocalCluster(
        3, transport="http", secret=SECRET, committed_leader=True, checked=False
    ) as cluster:
        yield cluster


def catga(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), out=out)
    return code, out.getvalue()


def test_status_json_shows_every_member_and_one_leader(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    code, out = catga("status", "--cluster", cluster.endpoints[1], "--secret", SECRET, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["leader"] == leader.raft_id and status["healthy"]
    rows = {r["endpoint"]: r for r in status["members"]}
    assert set(rows) == set(cluster.endpoints)
    assert [r["role"] for r in rows.values()].count("leader") == 1
    assert all(r["reachable"] and r["lag"] is not None for r in rows.values())
    assert {r["node_id"] for r in rows.values()} == {"node0", "node1", "node2"}


def test_status_table_and_the_first_url_that_answers(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATGA_CLUSTER_URL", f"http://127.0.0.1:1,{cluster.endpoints[0]}")
    monkeypatch.setenv("Cluster__Secret", SECRET)
    code, out = catga("status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "NODE", "ENDPOINT", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "REACHABLE"
    ]  # fmt: skip
    assert len(lines) == 5 and lines[-1].startswith("leader: ")


def test_status_exits_2_without_quorum(cluster: LocalCluster) -> None:
    # One node of a 3-voter configuration answers; the other two "voters" are dead ports.
    dead = [f"http://127.0.0.1:{p}" for p in free_ports(2)]
    config = ClusterConfig(
        local_node_endpoint=f"http://127.0.0.1:{free_ports(1)[0]}",
        members=tuple(dead),
        node_id="alone",
        election_timeout=timedelta(seconds=0.15),
        heartbeat_interval=timedelta(seconds=0.05),
    )
    with ClusterNode(config) as alone:
        code, out = catga("status", "--cluster", alone.raft_id, "--json", "--timeout", "2")
    assert code == 2
    status = json.loads(out)
    assert not status["quorum"] and not status["healthy"]
    assert sum(r["reachable"] for r in status["members"]) == 1


def test_members_list_add_remove_and_transfer(cluster: LocalCluster) -> None:
    url = cluster.endpoints[2]
    config = ClusterConfig(
        local_node_endpoint=f"http://127.0.0.1:{free_ports(1)[0]}",
        members=tuple(cluster.endpoints),
        node_id="joiner",
        election_timeout=timedelta(seconds=0.15),
        heartbeat_interval=timedelta(seconds=0.05),
        secret=SECRET,
        join=True,
    )
    with ClusterNode(config) as joiner:
        code, out = catga("members", "add", joiner.raft_id, "--cluster", url, "--secret", SECRET)
        assert code == 0 and f"voter    {joiner.raft_id}" in out
        code, out = catga("members", "list", "--cluster", url, "--secret", SECRET, "--json")
        assert code == 0 and joiner.raft_id in json.loads(out)["voters"]
        code, out = catga(
            "transfer-leader", "--to", joiner.raft_id, "--cluster", url, "--secret", SECRET
        )
        assert (code, out) == (0, f"leader: {joiner.raft_id}\n")
        code, out = catga("members", "remove", joiner.raft_id, "--cluster", url, "--secret", SECRET)
        assert code == 0 and joiner.raft_id not in out
        joiner.wait_for(lambda s: s.membership == "removed", 5)
        code, out = catga("transfer-leader", "--cluster", url, "--secret", SECRET, "--json")
        assert code == 0 and json.loads(out)["leader"] in cluster.endpoints
        # The removed node's idea of the leader is stale now; asked first, it follows the
        # leader the others name.
        code, out = catga("members", "list", "--cluster", joiner.raft_id, "--secret", SECRET)
        assert code == 0 and out.count("voter") == 3 and "(leader)" in out, out


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "catga_sync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "."},
    )


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("status",), 1, "no cluster to talk to: pass --cluster"),
        (("status", "--cluster", "http://127.0.0.1:1"), 2, "no node answered"),  # unhealthy
        (("status", "--cluster", "ftp://x"), 1, "is not a node URL"),
        (("members", "frobnicate"), 2, "invalid choice"),
        (("members", "add"), 2, "the following arguments are required: ENDPOINT"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(args: tuple[str, ...], code: int, says: str) -> None:
    done = _run(*args)
    assert done.returncode == code, done.stderr
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_refused_change_is_one_line(cluster: LocalCluster) -> None:
    done = _run("members", "remove", "http://127.0.0.1:1", "--cluster", cluster.endpoints[0],
                "--secret", SECRET)  # fmt: skip
    assert done.returncode == 1
    assert "is not a member" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    unsigned = _run("members", "list", "--cluster", cluster.endpoints[0])
    assert unsigned.returncode == 1 and "requires signed peer requests" in unsigned.stderr
    assert "--secret" in unsigned.stderr


def test_flask_cluster_group(cluster: LocalCluster) -> None:
    app = Flask("cli-test")
    config = ClusterConfig(
        local_node_endpoint=cluster.endpoints[0], members=tuple(cluster.endpoints), secret=SECRET,
        autostart=False,
    )  # fmt: skip
    CatgaCluster(app, config=config)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["cluster", "status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["healthy"]
    result = runner.invoke(args=["cluster", "members", "list"])
    assert result.exit_code == 0 and result.output.count("voter") == 3
    result = runner.invoke(args=["cluster", "--cluster", "http://127.0.0.1:1", "members", "list"])
    assert result.exit_code == 1 and "no node answered" in result.output
