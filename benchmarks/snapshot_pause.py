"""How long a snapshot of a large state stops the leader: on the Raft loop, or in a forked child.

For each way (``on the loop``: ``Cluster:BackgroundSnapshotAfter`` none; ``in a child``: the
default), a fresh cluster of three ``bench_node.py catga-orders`` processes on loopback
(durable SQLite, the guide's 150/50 ms timings, a snapshot every
:data:`~bench_node.ORDERS_SNAPSHOT_EVERY` entries) is loaded with ``--orders`` orders through a
:class:`~catga_sync.client.ClusterClient`, then sent small commands (a counter increment), one
after the other, for ``--seconds``: every 20 of them the nodes snapshot the whole state. It
prints, for each way, the commands' p50, p99 and longest latency, the commands done, the
snapshots due (one every 20 applied entries) and the term changes (elections) during the run,
with the machine, the command line and the load average.

    python benchmarks/snapshot_pause.py [--orders 300000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_node import BACKGROUND_SNAPSHOT_ENV, Counter, OrderBook
from report import command_line, exit_on_sigterm, load_line, machine_line
from scale_state import BATCH, Node, load_orders, wait_until
from throughput import free_ports, percentile

from catga_sync.client import ClusterClient

WAYS = {"on the loop": "none", "in a child": None}
"""Each way, and the ``Cluster:BackgroundSnapshotAfter`` its nodes get (None: the default)."""


def run(way: str, after: str | None, orders: int, seconds: float, state: Path) -> str:
    if after is None:
        os.environ.pop(BACKGROUND_SNAPSHOT_ENV, None)
    else:
        os.environ[BACKGROUND_SNAPSHOT_ENV] = after
    endpoints = [f"http://127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(e, endpoints, k, state) for k, e in enumerate(endpoints)]
    try:
        for node in nodes:
            node.start()
        with ClusterClient(endpoints, timeout=60) as client:
            client.wait_for_leader(60)
            book = client.state(OrderBook, timeout=120)
            load_orders(book, orders)
            counter = client.state(Counter, timeout=30)
            wait_until("the loads to be applied", lambda: book.size() == orders, 120)
            before = client.status()
            latencies: list[float] = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                counter.increment()
                latencies.append(time.perf_counter() - started)
            after_status = client.status()
        snapshots = after_status.last_applied // 20 - before.last_applied // 20
        return (
            f"{way:12}  commands {len(latencies):5d}  p50 {percentile(latencies, 50) * 1e3:7.2f} ms"
            f"  p99 {percentile(latencies, 99) * 1e3:8.2f} ms"
            f"  longest {max(latencies) * 1e3:8.1f} ms"
            f"  mean {statistics.fmean(latencies) * 1e3:7.2f} ms"
            f"  snapshots due {snapshots:3d}  term changes {after_status.term - before.term}"
        )
    finally:
        for node in nodes:
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    exit_on_sigterm()
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(
        f"{args.orders:,} orders loaded {BATCH:,} per command, then sequential increments for "
        f"{args.seconds:g} s; a snapshot of the whole state every 20 entries"
    )
    for way, after in WAYS.items():
        with tempfile.TemporaryDirectory(prefix="catga-bench-pause-") as state:
            print(run(way, after, args.orders, args.seconds, Path(state)), flush=True)
    print(load_line("after"))


if __name__ == "__main__":
    main()
