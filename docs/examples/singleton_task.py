"""A singleton task on a three-node cluster: it runs on the leader only and moves when the
leader dies.

Run it: ``python docs/examples/singleton_task.py``. The three nodes live in this process on an
in-memory network so that the script runs anywhere; a real node is
``ClusterNode(ClusterConfig.from_env())`` or ``CatgaCluster(app)`` and registers its tasks the
same way (``SingletonTasks.of(node).add(...)``, ``cluster.add_singleton_task(...)``).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from catga_sync.config import ClusterConfig
from catga_sync.node import ClusterNode
from catga_sync.singleton import SingletonTaskRunner, SingletonTasks, TaskContext
from catga_sync.storage import MemoryStorage
from catga_sync.transport.memory import MemoryNetwork, MemoryTransport

ENDPOINTS = [f"http://localhost:{5000 + k}" for k in range(3)]
started = threading.Condition()
runs: list[tuple[str, int]] = []  # (node, fencing token) of every run


class OutboxProcessor(SingletonTaskRunner):
    """The guide's example: publish pending messages while this node leads."""

    task_name = "OutboxProcessor"

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def execute_leader_task(self, ctx: TaskContext) -> None:
        print(f"{self.node_id}: OutboxProcessor started, fencing token {ctx.fencing_token}")
        with started:
            runs.append((self.node_id, ctx.fencing_token))
            started.notify_all()
        while not ctx.stop_requested:
            # publish a batch here, passing ctx.fencing_token to the store that marks it sent
            ctx.wait(0.05)  # sleeps, but wakes at once when leadership is lost
        print(f"{self.node_id}: OutboxProcessor stopped (term {ctx.fencing_token} is over)")


def make_node(network: MemoryNetwork, k: int) -> ClusterNode:
    config = ClusterConfig(
        local_node_endpoint=ENDPOINTS[k],
        members=tuple(ENDPOINTS),
        node_id=f"node{k}",
        election_timeout=timedelta(milliseconds=150),
        heartbeat_interval=timedelta(milliseconds=50),
    )
    node = ClusterNode(
        config,
        storage=MemoryStorage(config.node_id),
        transport=MemoryTransport(network, config.raft_id, config.node_id),
        serve_http=False,
    )
    SingletonTasks.of(node).add(OutboxProcessor(node.node_id))  # on every node
    network.register(node)
    return node


def wait_for_run(count: int) -> tuple[str, int]:
    with started:
        if not started.wait_for(lambda: len(runs) >= count, timeout=10):
            raise SystemExit("the task did not start")
        return runs[count - 1]


def main() -> None:
    network = MemoryNetwork()
    nodes = {node.node_id: node for node in (make_node(network, k) for k in range(3))}
    for node in nodes.values():
        node.start()
    leader_id, term = wait_for_run(1)
    print(f"{leader_id} leads in term {term}; kill it")
    killed_at = time.monotonic()
    nodes[leader_id].stop(transfer=False)  # as good as a crash for the others
    network.unregister(nodes[leader_id].raft_id)
    new_id, new_term = wait_for_run(2)
    elapsed = (time.monotonic() - killed_at) * 1000
    print(f"the task runs on {new_id} in term {new_term}, {elapsed:.0f} ms after the kill")
    assert new_id != leader_id and new_term > term
    for node in nodes.values():
        node.stop(transfer=False)
        SingletonTasks.of(node).close(timeout=5)  # wait for its run to return


if __name__ == "__main__":
    main()
