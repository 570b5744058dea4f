"""Distributed lock latency and hand-off rate of a durable 3-node cluster.

Three real processes on loopback, durable SQLite state (``synchronous FULL``), as in
:mod:`throughput`: this script's process is one node, ``bench_node.py`` runs the other two (the
lock table is built into every node). Prints, with the machine, the Python version and how many
runs and operations each figure took:

- acquire + release of one lock (p50/p99), one thread, in-process on the leader: two
  replicated commands (the grant, the release);
- the same on a follower: both commands forwarded to the leader over HTTP, each answered once
  applied on the follower;
- hand-offs per second of one lock among ``--threads`` threads on the leader, each looping
  acquire (waiting in the lock's queue) and release: the release entry grants the lock to the
  next waiter, whose node wakes it when that entry is applied.

For comparison, on the machine where the aims were set: tooz with PostgreSQL advisory locks
does acquire+release in 2.0 ms, etcd in 3.3 ms.

    python benchmarks/locks.py [--ops 500] [--seconds 5] [--runs 3] [--threads 8]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_node import catga_node
from throughput import Latency, concurrent, peers, sequential

from catga_sync import locks
from catga_sync.node import ClusterNode
from tests.e2e.harness import free_ports, poll

WARMUP = 50
AIMS = {"leader": 2.0, "follower": 3.5, "handoffs": 600.0}


def acquire_release(node: ClusterNode, name: str) -> Callable[[], object]:
    def once() -> object:
        with locks.lock(node, name, ttl=30, timeout=10):
            return None

    return once


def handoffs(node: ClusterNode, threads: int, seconds: float) -> tuple[int, float]:
    """``threads`` threads take turns holding one lock for ``seconds``; (grants, elapsed)."""

    def make_call() -> Callable[[], object]:
        def hold() -> object:
            with locks.lock(node, "bench-handoff", ttl=30, timeout=30):
                return None

        return hold

    grants, elapsed, _latencies = concurrent(make_call, threads, seconds)
    return grants, elapsed


def settled(node: ClusterNode) -> bool:
    s = node.status
    return s.leader_id is not None and s.commit_term == s.term


def bench(args: argparse.Namespace, state: Path) -> dict[str, object]:
    ports = free_ports(3)
    endpoints = [f"http://127.0.0.1:{p}" for p in ports]
    (state / "node0").mkdir(parents=True)
    with peers("catga", endpoints, state) as group:
        node = catga_node(endpoints[0], endpoints, "node0", str(state / "node0")).start()
        try:
            poll(lambda: settled(node), 30, "a leader")
            deadline = time.monotonic() + 30
            while not node.status.is_leader:
                assert time.monotonic() < deadline, "could not make the local node the leader"
                group.transfer_to(node.raft_id)
                with suppress(TimeoutError):
                    node.wait_for(lambda s: s.is_leader, 2)
            poll(lambda: settled(node), 10, "the local node to lead")
            leader, rates = Latency(), []
            for _ in range(args.runs):
                leader.runs.append(sequential(acquire_release(node, "bench-seq"), args.ops, WARMUP))
                rates.append(handoffs(node, args.threads, args.seconds))
            node.transfer_leadership()
            poll(lambda: settled(node) and not node.status.is_leader, 10, "another leader")
            follower = Latency()
            for _ in range(args.runs):
                follower.runs.append(
                    sequential(acquire_release(node, "bench-seq"), args.ops, WARMUP)
                )
            return {"leader": leader, "follower": follower, "handoffs": rates}
        finally:
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=500, help="acquire+release per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a hand-off run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}"
    )
    print(
        f"{args.runs} runs per figure; sequential: {WARMUP} warm-up + {args.ops} acquire+release "
        f"per run; hand-offs: {args.threads} threads for {args.seconds:g} s per run"
    )
    print("catga_sync: 3 processes, SQLite synchronous=FULL (fsync per Ready)\n")
    with tempfile.TemporaryDirectory(prefix="catga-bench-locks-") as tmp:
        result = bench(args, Path(tmp))
    leader, follower = result["leader"], result["follower"]
    assert isinstance(leader, Latency) and isinstance(follower, Latency)
    print(f"acquire+release, leader, one thread:    {leader.line()}")
    print(f"  aim: p50 <= {AIMS['leader']} ms (tooz+PostgreSQL 2.0 ms)")
    print(f"acquire+release, follower, one thread:  {follower.line()}")
    print(f"  aim: p50 <= {AIMS['follower']} ms (etcd 3.3 ms)")
    rates = result["handoffs"]
    assert isinstance(rates, list)
    per_second = [n / s for n, s in rates]
    print(
        f"hand-offs of one lock among {args.threads} threads, leader: "
        f"{statistics.median(per_second):,.0f}/s ({min(per_second):,.0f}-{max(per_second):,.0f};"
        f" {len(rates)} runs, {sum(n for n, _ in rates):,} grants)"
    )
    print(f"  aim: >= {AIMS['handoffs']:.0f}/s")


if __name__ == "__main__":
    main()
