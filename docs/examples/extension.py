"""A feature of your own, plugged into a node as an extension.

``LeadershipLog`` keeps the terms this node led: it watches leadership through a
``LeadershipWatch`` (installed before the node starts), adds ``terms_led`` to ``GET /cluster``
and a counter to ``/metrics``. Run it: ``python docs/examples/extension.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from catga_sync import ClusterConfig, ClusterNode, Extension, NodeHandle
from catga_sync.metrics import render
from catga_sync.runtime import LeadershipChange, LeadershipWatch, counter
from catga_sync.storage import MemoryStorage
from catga_sync.web.ops import cluster_document


@dataclass
class LeadershipLogStats:
    terms_led: int = counter("Terms this node led (the example's own counter)")


class LeadershipLog(Extension):
    name = "leadership_log"

    def __init__(self) -> None:
        self.terms: list[int] = []
        self.stats = LeadershipLogStats()

    def install(self, node: NodeHandle) -> None:
        LeadershipWatch(node, self._changed)  # runs on the Raft loop: keep it short

    def _changed(self, change: LeadershipChange) -> None:
        if change.elected:
            assert change.leading is not None
            self.terms.append(change.leading)
            self.stats.terms_led += 1

    def describe(self) -> dict[str, Any]:
        return {"terms_led": list(self.terms)}

    def counters(self) -> LeadershipLogStats:
        return self.stats


config = ClusterConfig(local_node_endpoint="http://127.0.0.1:7801", node_id="solo")
node = ClusterNode(config, storage=MemoryStorage("solo"), serve_http=False)
log = node.add_extension(LeadershipLog())  # before start: it must see every change
with node:
    node.wait_for(lambda status: status.is_leader, timeout=10)
    node.run_on_loop(lambda: None)  # a barrier: the loop's listeners have run
    document = cluster_document(node)
    metrics = render(node)[0].decode()
    line = next(m for m in metrics.splitlines() if m.startswith("catga_terms_led_total"))
    print("extensions:", ", ".join(node.extensions))
    print("GET /cluster terms_led:", document["terms_led"])
    print("/metrics:", line)
    assert document["terms_led"] == [node.status.term] == log.terms
    assert line == 'catga_terms_led_total{node_id="solo"} 1.0'
    assert "singleton_tasks" in document and "singleton_jobs" in document
