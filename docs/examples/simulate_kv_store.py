"""Test your own replicated state machine against crashes and partitions with the simulator.

Run it: ``python docs/examples/simulate_kv_store.py``. The simulator checks Raft's safety
properties after every event; this script checks the key-value store's own promise: every node
ends with the same map, and no acknowledged write is lost.
"""

from __future__ import annotations

import json

from catga_sync.testing import SimulatedCluster


class KeyValueStore:
    """A deterministic state machine: commands are JSON ``{"set": key, "value": v}``."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}

    def apply(self, index: int, command: bytes) -> object:
        body = json.loads(command)
        self.data[body["set"]] = body["value"]
        return body["value"]

    def snapshot(self) -> bytes:
        return json.dumps(self.data, sort_keys=True).encode()

    def restore(self, data: bytes) -> None:
        self.data = json.loads(data)


def write(cluster: SimulatedCluster, key: str, value: object) -> None:
    cluster.commit(json.dumps({"set": key, "value": value}).encode())


def main() -> None:
    cluster = SimulatedCluster(5, seed=42, state_machine=KeyValueStore)
    write(cluster, "greeting", "hello")

    # Lossy, reordering links and a partition that cuts the leader off with one follower.
    cluster.set_faults(drop=0.05, duplicate=0.02, delay=(0, 3))
    leader = cluster.wait_for_leader()
    follower = next(n for n in sorted(cluster.nodes) if n != leader)
    cluster.split([leader, follower])
    write(cluster, "greeting", "hello from the majority")  # the majority side elects anew

    # The old leader's side heals, a node crashes and comes back, and we snapshot.
    cluster.heal()
    victim = cluster.wait_for_leader()
    cluster.crash(victim)
    write(cluster, "counter", 1)
    cluster.compact(cluster.wait_for_leader())
    cluster.restart(victim)
    write(cluster, "counter", 2)

    cluster.set_faults()
    cluster.run(200)
    stores = {node: cluster.machine(node).data for node in sorted(cluster.nodes)}  # type: ignore[attr-defined]
    for node, data in stores.items():
        print(f"{node}: {data}")
    assert all(
        data == {"greeting": "hello from the majority", "counter": 2} for data in stores.values()
    )
    print("every node agrees; no invariant was violated")


if __name__ == "__main__":
    main()
