"""End to end: operating a cluster of real example processes with the ``catga`` command line.
``catga status`` sees three members and one leader; a fourth process started with ``--join``
and added with ``catga members add`` serves the existing orders as a voter; removing the
leader with ``catga members remove`` leaves three voters and a new leader; ``catga
transfer-leader --to`` moves leadership there."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from .harness import ROOT, ExampleCluster, NodeProcess, free_ports, get_json, poll

pytestmark = pytest.mark.e2e


def catga(*args: str) -> tuple[int, str, str]:
    """Run the console script (``python -m catga_sync`` where it is not installed)."""
    script = Path(sys.executable).with_name("catga")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "catga_sync"]
    done = subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def status(url: str) -> tuple[int, dict[str, Any]]:
    code, out, err = catga("status", "--cluster", url, "--json")
    assert out, err
    return code, json.loads(out)


def create_order(node: NodeProcess, customer: str) -> dict[str, Any]:
    response = requests.post(
        f"{node.url}/orders",
        json={"customer": customer, "amount": 10},
        headers={"Idempotency-Key": uuid.uuid4().hex},
        timeout=15,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_status_join_add_remove_the_leader_and_transfer(tmp_path: Path) -> None:
    cluster = ExampleCluster(tmp_path)
    cluster.start()
    try:
        poll(lambda: len(cluster.statuses()) == 3, 60, "all three nodes serving")
        leader = cluster.wait_for_leader()
        first = cluster.nodes[0]
        orders = [create_order(first, f"customer{k}") for k in range(3)]

        code, seen = status(first.url)
        assert code == 0, seen
        assert len(seen["members"]) == 3 and seen["leader"] == leader.endpoint
        assert [m["role"] for m in seen["members"]].count("leader") == 1

        joiner = NodeProcess("node3", free_ports(1)[0], first.members, tmp_path, ["--join"])
        cluster.nodes.append(joiner)  # killed with the others at the end
        joiner.start()
        poll(lambda: _membership(joiner) == "joining", 60, "the joiner serving, waiting")
        health_code, health = get_json(f"{joiner.url}/health")
        assert health_code == 503 and "Join mode" in health["results"]["cluster"]["description"]

        code, out, err = catga("members", "add", joiner.endpoint, "--cluster", first.url)
        assert code == 0, err
        assert f"voter    {joiner.endpoint}" in out
        assert _membership(joiner) == "voter"
        code, body = get_json(f"{joiner.url}/orders", timeout=15)
        assert code == 200, body
        assert {o["id"] for o in body["orders"]} >= {o["id"] for o in orders}

        leader = cluster.wait_for_leader()
        code, out, err = catga("members", "remove", leader.endpoint, "--cluster", first.url)
        assert code == 0, err
        assert leader.endpoint not in out
        poll(lambda: _membership(leader) == "removed", 15, "the old leader knows it is removed")
        survivor = next(n for n in cluster.nodes if n is not leader)

        def settled() -> dict[str, Any] | None:
            code, seen = status(survivor.url)
            return seen if code == 0 else None

        seen = poll(settled, 15, "three voters agreeing on a new leader")
        assert len(seen["voters"]) == 3 and leader.endpoint not in seen["voters"]
        assert seen["leader"] != leader.endpoint

        target = next(e for e in seen["voters"] if e != seen["leader"])
        code, out, err = catga("transfer-leader", "--to", target, "--cluster", survivor.url)
        assert (code, out) == (0, f"leader: {target}\n"), err
        seen = poll(settled, 15, "the voters agreeing on the new leader")
        assert seen["leader"] == target
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def _membership(node: NodeProcess) -> str | None:
    try:
        code, body = get_json(f"{node.url}/cluster")
    except OSError:
        return None
    return body.get("membership") if code == 200 else None
