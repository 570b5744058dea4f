"""The Raft core's own CPU cost: a 3-node cluster in one process, no I/O, no faults.

Prints committed entries per second (every entry committed on the leader and applied on all
three nodes) for several proposal batch sizes, and ticks per second of an idle cluster. The
driver is the leanest that honours the Ready contract (persist is a no-op, messages go straight
to the recipient), so the figures are the core's cost, not the simulator's checks.

    python benchmarks/core.py [--entries 200000] [--runs 5]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections import deque

from catga_sync.raft import Membership, Message, RaftConfig, RaftCore, Role


class LeanCluster:
    def __init__(self, size: int = 3) -> None:
        ids = [f"n{k}" for k in range(size)]
        membership = Membership(frozenset(ids))
        self.cores = {
            node_id: RaftCore(RaftConfig(node_id, membership), rng=random.Random(k))
            for k, node_id in enumerate(ids)
        }
        self.queue: deque[Message] = deque()
        self.applied = dict.fromkeys(ids, 0)

    def pump(self) -> None:
        """Handle every Ready and deliver every message until the cluster is quiet."""
        cores, queue, applied = self.cores, self.queue, self.applied
        busy = True
        while busy:
            busy = False
            for node_id, core in cores.items():
                while core.has_ready():
                    busy = True
                    ready = core.ready()
                    queue.extend(ready.early_messages)
                    queue.extend(ready.messages)
                    applied[node_id] += len(ready.committed_entries)
                    core.advance(ready)
            while queue:
                busy = True
                message = queue.popleft()
                cores[message.to].step(message)

    def elect(self) -> RaftCore:
        while True:
            for core in self.cores.values():
                core.tick()
            self.pump()
            leaders = [c for c in self.cores.values() if c.role is Role.LEADER]
            if leaders:
                return leaders[0]


def committed_per_second(entries: int, batch: int) -> float:
    cluster = LeanCluster()
    leader = cluster.elect()
    start_applied = min(cluster.applied.values())
    payload = b"x" * 64
    commands = [payload] * batch
    started = time.perf_counter()
    for _ in range(entries // batch):
        leader.propose_many(commands)
        cluster.pump()
    elapsed = time.perf_counter() - started
    done = min(cluster.applied.values()) - start_applied
    assert done >= entries // batch * batch, (done, entries)
    return done / elapsed


def idle_ticks_per_second(ticks: int) -> float:
    cluster = LeanCluster()
    cluster.elect()
    cores = list(cluster.cores.values())
    started = time.perf_counter()
    for _ in range(ticks):
        for core in cores:
            core.tick()
        cluster.pump()
    return ticks / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--ticks", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, {args.runs} runs, median (min-max)"
    )
    for batch in (1, 16, 256):
        rates = [committed_per_second(args.entries, batch) for _ in range(args.runs)]
        print(
            f"committed entries/s, 3 nodes, batch {batch:>3}: "
            f"{statistics.median(rates):>10,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        )
    rates = [idle_ticks_per_second(args.ticks) for _ in range(args.runs)]
    print(
        f"idle cluster ticks/s (all 3 nodes ticked):  "
        f"{statistics.median(rates):>10,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
    )


if __name__ == "__main__":
    main()
