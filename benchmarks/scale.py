"""How the figures move with the number of members: 3, 5 and 7 example-app processes.

For each cluster size (``--nodes 3,5,7``), real processes of the example app on loopback
(durable SQLite, ``synchronous FULL``, the guide's 150/50 ms timings), one size after the
other, each started afresh:

- idle CPU per node (% of one core) over ``--idle`` seconds, the leader apart: it sends a
  heartbeat to every follower, so its cost should grow with the members, a follower's not;
- commit latency: sequential ``POST /orders`` to the leader, p50/p99 (one more follower to
  persist and answer before the commit: the quorum grows with the members);
- throughput: ``--threads`` threads posting orders to the leader;
- failover: SIGKILL of the leader, ``--kills`` times, to a new leader that has committed an
  entry of its term (as :mod:`failover`), p50/max;
- RSS per node.

Then the same figures as multiples of the first size's, so that one sees which term grows
with the members. All processes share this machine's cores: with 7 nodes on 2 cores, the
figures also measure the contention, which the output says with the load average.

    python benchmarks/scale.py [--nodes 3,5,7] [--ops 300] [--seconds 5] [--threads 16]
        [--kills 5] [--idle 20] [--plot FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from failover import cpu_seconds, one_failover, rss_mib
from report import (
    MATPLOTLIB_MISSING,
    command_line,
    exit_on_sigterm,
    growth,
    load_line,
    machine_line,
    matplotlib_available,
    save,
    short_machine,
)
from throughput import WARMUP, concurrent, order_poster, percentile, sequential

from tests.e2e.harness import ExampleCluster

TIMING = ["--election-timeout", "0.15", "--heartbeat-interval", "0.05"]


@dataclass(frozen=True, slots=True)
class SizeFigures:
    """The figures of one cluster size."""

    nodes: int
    idle_cpu_leader: float  # % of a core
    idle_cpu_followers: float  # mean, % of a core
    commit_p50: float  # seconds
    commit_p99: float
    per_second: float
    failover_p50: float  # seconds
    failover_max: float
    rss_mib: float  # mean per node


def idle_cpu(cluster: ExampleCluster, seconds: float) -> tuple[float, float, bool]:
    """(% of a core used by the leader, mean % used by a follower, whether the leader stayed
    the same) over ``seconds`` idle."""
    leader = cluster.wait_for_leader(timeout=30)
    time.sleep(2)
    pids = {n.name: n.process.pid for n in cluster if n.process is not None}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    used = {name: 100 * (cpu_seconds(pid) - before[name]) / seconds for name, pid in pids.items()}
    followers = [v for name, v in used.items() if name != leader.name]
    return used[leader.name], statistics.mean(followers), cluster.leader() is leader


def measure_size(args: argparse.Namespace, nodes: int, state: Path) -> SizeFigures:
    state.mkdir(parents=True)
    cluster = ExampleCluster(state, size=nodes, extra_args=TIMING)
    cluster.start()
    try:
        cluster.wait_for_leader(timeout=60)
        cpu_leader, cpu_follower, steady = idle_cpu(cluster, args.idle)
        if not steady:
            print(f"  ({nodes} members: the leader changed while idle; its CPU is mixed in)")
        rss = statistics.mean(rss_mib(n.process.pid) for n in cluster if n.process is not None)
        leader = cluster.wait_for_leader(timeout=30)
        latencies = sequential(order_poster(leader.port), args.ops, min(WARMUP, args.ops))
        count, elapsed, _ = concurrent(
            lambda: order_poster(leader.port), args.threads, args.seconds
        )
        failovers = [one_failover(cluster, graceful=False) for _ in range(args.kills)]
        return SizeFigures(
            nodes=nodes,
            idle_cpu_leader=cpu_leader,
            idle_cpu_followers=cpu_follower,
            commit_p50=percentile(latencies, 50),
            commit_p99=percentile(latencies, 99),
            per_second=count / elapsed,
            failover_p50=statistics.median(failovers) if failovers else float("nan"),
            failover_max=max(failovers) if failovers else float("nan"),
            rss_mib=rss,
        )
    finally:
        cluster.stop()


def rows(figures: list[SizeFigures], threads: int) -> list[tuple[str, list[str]]]:
    """The table: one row per figure, one column per size, then the growth from the first."""
    table = [
        ("idle CPU of the leader, % of a core", [f.idle_cpu_leader for f in figures], "{:.1f}"),
        ("idle CPU of a follower, % of a core", [f.idle_cpu_followers for f in figures], "{:.1f}"),
        (
            "idle CPU of the cluster, % of a core",
            [f.idle_cpu_leader + f.idle_cpu_followers * (f.nodes - 1) for f in figures],
            "{:.1f}",
        ),
        ("commit latency p50, ms", [f.commit_p50 * 1e3 for f in figures], "{:.2f}"),
        ("commit latency p99, ms", [f.commit_p99 * 1e3 for f in figures], "{:.2f}"),
        (f"POST /orders/s, {threads} threads", [f.per_second for f in figures], "{:,.0f}"),
        ("failover p50, ms", [f.failover_p50 * 1e3 for f in figures], "{:.0f}"),
        ("failover max, ms", [f.failover_max * 1e3 for f in figures], "{:.0f}"),
        ("RSS per node, MiB", [f.rss_mib for f in figures], "{:.1f}"),
    ]
    return [
        (label, [fmt.format(v) for v in values] + [growth(values)]) for label, values, fmt in table
    ]


def write_plot(path: str, figures: list[SizeFigures], title: str, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [f.nodes for f in figures]
    panels = [
        (
            "idle CPU, % of a core",
            [
                ("leader", [f.idle_cpu_leader for f in figures]),
                ("follower (mean)", [f.idle_cpu_followers for f in figures]),
            ],
        ),
        (
            "commit latency (POST /orders), ms",
            [
                ("p50", [f.commit_p50 * 1e3 for f in figures]),
                ("p99", [f.commit_p99 * 1e3 for f in figures]),
            ],
        ),
        ("throughput, POST /orders/s", [(f"{threads} threads", [f.per_second for f in figures])]),
        (
            "failover (SIGKILL of the leader), ms",
            [
                ("p50", [f.failover_p50 * 1e3 for f in figures]),
                ("max", [f.failover_max * 1e3 for f in figures]),
            ],
        ),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    for axis, (name, lines) in zip(axes, panels, strict=True):
        for label, values in lines:
            axis.plot(sizes, values, marker="o", label=label)
        axis.set_xticks(sizes)
        axis.set_xlabel("members")
        axis.set_title(name, fontsize=10)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save(figure, title, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="3,5,7", help="cluster sizes, comma-separated")
    parser.add_argument("--ops", type=int, default=300, help="sequential orders per size")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the throughput run")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of the leader per size")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU per size")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of the figures (matplotlib)")
    args = parser.parse_args()
    if args.plot and not matplotlib_available():
        parser.error(MATPLOTLIB_MISSING)
    sizes = [int(n) for n in args.nodes.split(",") if n]
    exit_on_sigterm()
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(
        f"one run per size; example app, SQLite FULL, 150/50 ms; idle {args.idle:g} s, "
        f"{min(WARMUP, args.ops)} warm-up + {args.ops} sequential orders, {args.threads} threads "
        f"for {args.seconds:g} s, SIGKILLs of the leader: {args.kills}"
    )
    figures = []
    with tempfile.TemporaryDirectory(prefix="catga-bench-scale-") as tmp:
        for nodes in sizes:
            figures.append(measure_size(args, nodes, Path(tmp) / f"n{nodes}"))
            print(f"  {nodes} members measured; {load_line('now')}")
    print()
    heading = ["figure", *(f"{n} members" for n in sizes), f"growth from {sizes[0]}"]
    table = rows(figures, args.threads)
    width = max(len(label) for label, _ in table) + 2
    print(
        f"{heading[0]:<{width}}" + "".join(f"{h:>14}" for h in heading[1:-1]) + f"  {heading[-1]}"
    )
    for label, cells in table:
        print(f"{label:<{width}}" + "".join(f"{c:>14}" for c in cells[:-1]) + f"  {cells[-1]}")
    print(load_line("after"))
    if args.plot:
        write_plot(
            args.plot, figures, f"scale.py: catga_sync by members; {short_machine()}", args.threads
        )
        print(f"picture: {args.plot}")


if __name__ == "__main__":
    main()
