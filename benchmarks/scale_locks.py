"""How the figures move with the number of locks held at once: 1, 1,000 and 10,000.

For each count (``--held 1,1000,10000``), a fresh cluster — this process as the leader, two
``bench_node.py`` processes as followers (durable SQLite, ``synchronous FULL``, the guide's
150/50 ms timings) — takes that many locks on the leader with auto-renewal (``--ttl``, renewed
every third of it), then, over ``--window`` seconds while they are held:

- renewal traffic: log entries committed per second (nothing else runs but the probe below);
- CPU of the leader's process (which also runs the holders) and of a follower, % of a core;
- acquire + release of one more lock, sequential, p50/p99 (``--ops`` of them);
- threads in the leader's process, and its RSS.

Then each figure as a multiple of the first count's: which term grows with the held leases.

    python benchmarks/scale_locks.py [--held 1,1000,10000] [--ttl 30] [--window 20] [--ops 100]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_node import catga_node
from failover import cpu_seconds, rss_mib
from report import command_line, exit_on_sigterm, growth, load_line, machine_line
from throughput import free_ports, local_leader, peers, percentile

from catga_sync import locks
from catga_sync.errors import CatgaError
from catga_sync.locks import Lease, LeaseMonitor, LockTable
from catga_sync.node import ClusterNode

TAKERS = 16
"""Threads taking the held locks (so that 10,000 take seconds, not half a minute)."""


@dataclass(frozen=True, slots=True)
class HeldFigures:
    held: int
    taken: int
    lost: int
    per_entry: float
    take_seconds: float
    entries_per_second: float
    leader_cpu: float
    follower_cpu: float
    p50_ms: float
    p99_ms: float
    threads: int
    rss_mib: float


def in_parallel(count: int, work: Callable[[int], object]) -> None:
    """``work(n)`` for every n below ``count``, on :data:`TAKERS` threads."""
    guard = threading.Lock()
    numbers = iter(range(count))

    def worker() -> None:
        while True:
            with guard:
                n = next(numbers, None)
            if n is None:
                return
            work(n)

    threads = [threading.Thread(target=worker) for _ in range(min(TAKERS, count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def take(node: ClusterNode, count: int, ttl: float) -> list[Lease]:
    """As many of ``count`` locks as the cluster grants (past the knee, not all of them)."""
    leases: list[Lease] = []

    def one(n: int) -> None:
        with suppress(CatgaError):
            leases.append(locks.acquire(node, f"held-{n:05d}", ttl=ttl, timeout=10))

    in_parallel(count, one)
    return leases


def monitor_of(node: ClusterNode) -> LeaseMonitor:
    listener = node.state(LockTable).machine.listener
    assert isinstance(listener, LeaseMonitor)
    return listener


def release(lease: Lease) -> None:
    with suppress(CatgaError):  # lost already: nothing to give back
        lease.release()


def measure_count(args: argparse.Namespace, held: int, state: Path) -> HeldFigures:
    ports = free_ports(3)
    endpoints = [f"http://127.0.0.1:{p}" for p in ports]
    (state / "node0").mkdir(parents=True)
    with peers("catga", endpoints, state) as group:
        node = catga_node(endpoints[0], endpoints, "node0", str(state / "node0")).start()
        leases: list[Lease] = []
        try:
            local_leader(node, group)
            started = time.monotonic()
            leases = take(node, held, args.ttl)
            take_seconds = time.monotonic() - started
            follower_pid = group.processes[0].pid
            # Let the renewals spread out over a whole period before measuring.
            time.sleep(min(args.ttl / 3, 10))
            first = node.status.commit_index
            group = monitor_of(node).renewals
            group_before = (group.entries, group.renewals)
            cpu = (time.process_time(), cpu_seconds(follower_pid))
            started = time.monotonic()
            samples: list[float] = []
            while time.monotonic() - started < args.window:
                if len(samples) < args.ops:
                    began = time.perf_counter()
                    try:
                        with locks.lock(node, "probe", ttl=args.ttl, timeout=30):
                            pass
                    except CatgaError:
                        samples.append(math.inf)  # past the knee: counted, as the slowest
                        continue
                    samples.append((time.perf_counter() - began) * 1000)
                else:
                    time.sleep(0.05)
            elapsed = time.monotonic() - started
            probe_entries = 2 * len(samples)
            entries = node.status.commit_index - first - probe_entries
            leader_cpu = (time.process_time() - cpu[0]) / elapsed * 100
            follower_cpu = (cpu_seconds(follower_pid) - cpu[1]) / elapsed * 100
            lost = sum(lease.lost.is_set() for lease in leases)
            entries_sent = group.entries - group_before[0]
            renewed = group.renewals - group_before[1]
            samples.sort()
            return HeldFigures(
                held,
                len(leases),
                lost,
                renewed / entries_sent if entries_sent else 0.0,
                take_seconds,
                entries / elapsed,
                leader_cpu,
                follower_cpu,
                statistics.median(samples),
                percentile(samples, 99),
                threading.active_count(),
                rss_mib(os.getpid()),
            )
        finally:
            # Released, so that their renewal threads do not run on into the next count.
            in_parallel(len(leases), lambda n: release(leases[n]))
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held", default="1,1000,10000", help="locks held at once")
    parser.add_argument("--ttl", type=float, default=30.0, help="their TTL, seconds")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per count")
    parser.add_argument("--ops", type=int, default=100, help="probe acquire+release per count")
    args = parser.parse_args()
    period = args.ttl / 3
    # Locks taken together renew together: only whole renewal periods average them out.
    args.window = max(1, round(args.window / period)) * period
    exit_on_sigterm()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    counts = [int(s) for s in args.held.split(",") if s]
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(
        f"3 nodes (this process leads and holds the locks), TTL {args.ttl:g} s (renewed every "
        f"{period:g} s), measured over {args.window:g} s per count\n"
    )
    figures: list[HeldFigures] = []
    with tempfile.TemporaryDirectory(prefix="catga-scale-locks-") as tmp:
        for held in counts:
            figures.append(measure_count(args, held, Path(tmp) / str(held)))
            print(f"  {held:,} held: measured ({load_line('now')})", flush=True)
    table = [
        ("locks to hold", [f"{f.held:,}" for f in figures]),
        ("granted (10 s each at most)", [f"{f.taken:,}" for f in figures]),
        ("taking them (s)", [f"{f.take_seconds:.1f}" for f in figures]),
        ("lost while held", [f"{f.lost:,}" for f in figures]),
        ("renewal entries/s", [f"{f.entries_per_second:.1f}" for f in figures]),
        ("renewals per entry", [f"{f.per_entry:.1f}" for f in figures]),
        ("leader CPU (%)", [f"{f.leader_cpu:.1f}" for f in figures]),
        ("follower CPU (%)", [f"{f.follower_cpu:.1f}" for f in figures]),
        ("acquire+release p50 (ms)", [f"{f.p50_ms:.2f}" for f in figures]),
        ("acquire+release p99 (ms)", [f"{f.p99_ms:.2f}" for f in figures]),
        ("threads, leader process", [f"{f.threads:,}" for f in figures]),
        ("RSS, leader process (MiB)", [f"{f.rss_mib:.1f}" for f in figures]),
    ]
    print()
    width = max(len(label) for label, _ in table)
    for label, values in table:
        print(f"{label:<{width}}  " + "  ".join(f"{v:>10}" for v in values))
    print("\nas multiples of the first count's:")
    for label, values in (
        ("locks held", [float(f.held) for f in figures]),
        ("renewals/s", [f.entries_per_second for f in figures]),
        ("leader CPU", [f.leader_cpu for f in figures]),
        ("acquire p50", [f.p50_ms for f in figures]),
        ("RSS", [f.rss_mib for f in figures]),
    ):
        print(f"  {label:<12} {growth(values)}")
    print(load_line("after"))


if __name__ == "__main__":
    main()
