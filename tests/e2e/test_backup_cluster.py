"""End to end: back up a cluster of three example processes with ``catga snapshot save``, and
restore it as a NEW cluster on other ports (new endpoints) with ``catga restore`` for each of
its nodes: started, the new cluster elects a leader and serves the same orders, and takes new
ones. The old cluster keeps running meanwhile, untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from .harness import ExampleCluster, NodeProcess, poll
from .test_operations_cluster import catga, create_order

pytestmark = pytest.mark.e2e


def orders_of(node: NodeProcess) -> list[dict[str, object]]:
    response = requests.get(f"{node.url}/orders", timeout=15)
    assert response.status_code == 200, response.text
    return list(response.json()["orders"])


def test_save_then_restore_a_new_cluster_on_new_endpoints(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = ExampleCluster(tmp_path / "old")
    old.start()
    new: ExampleCluster | None = None
    try:
        poll(lambda: len(old.statuses()) == 3, 60, "the old cluster serving")
        new = ExampleCluster(tmp_path / "new")  # its ports picked while the old ones are taken
        old.wait_for_leader()
        created = [create_order(old.nodes[k % 3], f"customer{k}") for k in range(5)]
        backup = tmp_path / "backup.json"

        code, out, err = catga("snapshot", "save", str(backup), "--cluster", old.nodes[1].url)
        assert code == 0, err
        assert out.startswith(f"saved {backup}: index "), out
        saved = json.loads(backup.read_text())
        assert saved["format"] == "catga-snapshot/1"
        assert set(saved["membership"]["voters"]) == {n.endpoint for n in old}

        endpoints = ",".join(n.endpoint for n in new)
        assert not set(endpoints.split(",")) & {n.endpoint for n in old}
        for node in new:
            code, out, err = catga(
                "restore", str(backup), "--state", str(node.state_dir), "--endpoint",
                node.endpoint, "--members", endpoints, "--node-id", node.name,
            )  # fmt: skip
            assert code == 0, err
            assert f"restored node {node.name} ({node.endpoint})" in out
        # A second restore into the same state is refused, and changes nothing.
        code, out, err = catga(
            "restore", str(backup), "--state", str(new.nodes[0].state_dir),
            "--endpoint", new.nodes[0].endpoint, "--members", endpoints, "--node-id", "node0",
        )  # fmt: skip
        assert code == 1 and "already holds Raft state" in err and len(err.splitlines()) == 1

        new.start()
        poll(lambda: len(new.statuses()) == 3, 60, "the new cluster serving")
        leader = new.wait_for_leader()
        assert set(leader.status()["members"]) == set(endpoints.split(","))
        for node in new:  # linearizable reads on every node: the same orders
            assert orders_of(node) == orders_of(old.nodes[0])
        assert {o["id"] for o in orders_of(new.nodes[2])} == {o["id"] for o in created}
        more = create_order(new.nodes[0], "after-restore")
        assert more["id"] in {o["id"] for o in orders_of(new.nodes[1])}
        assert more["id"] not in {o["id"] for o in orders_of(old.nodes[1])}  # two clusters now
    except BaseException:
        print(old.logs())
        if new is not None:
            print(new.logs())
        raise
    finally:
        if new is not None:
            new.stop()
        old.stop()
