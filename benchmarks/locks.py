"""Lock latency and hand-off rate of a durable 3-node cluster, beside etcd and PySyncObj.

Three real processes on loopback, durable SQLite state (``synchronous FULL``), as in
:mod:`throughput`: this script's process is one node, ``bench_node.py`` runs the other two (the
lock table is built into every node). Prints, with the machine, the command line, the load
average before and after, and how many runs and operations each figure took:

- acquire + release of one lock (p50/p99), one thread, in-process on the leader: two
  replicated commands (the grant, the release);
- the same on a follower: both commands forwarded to the leader over HTTP, each answered once
  applied on the follower;
- hand-offs per second of one lock among ``--threads`` threads on the leader, each looping
  acquire (waiting in the lock's queue) and release: the release entry grants the lock to the
  next waiter, whose node wakes it when that entry is applied;
- etcd, when ``etcd`` is on ``PATH`` (Debian: ``apt-get install etcd-server``), three members
  on loopback (:mod:`etcd_cluster`): ``/v3/lock/lock`` + ``/v3/lock/unlock`` through the JSON
  gateway on the leader and via a follower, each client thread with its own keep-alive
  connection and its own lease (``/v3/lease/grant``, as ``etcdctl lock`` takes a session), and
  the hand-offs of one lock among ``--threads`` threads;
- PySyncObj's ``ReplLockManager`` (``tryAcquire`` + ``release``, ``sync=True``: two replicated
  commands, in-memory log, no fsync) on the leader and on a follower. It has no waiting
  acquire, so no hand-off figure;
- the ratio lines ``catga_sync / etcd`` and ``catga_sync / PySyncObj`` (latency: < 1 is
  faster; throughput: > 1 is faster), with the issue's aims.

``--plot FILE`` also measures hand-offs among 1, 2, 4, 8 and 16 threads (one run each) and
writes a PNG of it beside the latency distributions (matplotlib: ``pip install -e '.[bench]'``).
For comparison, on the machine where the aims were set: tooz with PostgreSQL advisory locks
does acquire+release in 2.0 ms and 608 hand-offs/s (not measured here).

    python benchmarks/locks.py [--ops 500] [--seconds 5] [--runs 3] [--threads 8]
        [--skip catga,pysyncobj,etcd] [--etcd PATH] [--plot FILE]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_node import (
    LOCK_TTL,
    add_transport_options,
    catga_node,
    pysyncobj_counter,
    use_transport_options,
)
from etcd_cluster import Gateway, b64, etcd_cluster
from report import (
    MATPLOTLIB_MISSING,
    SWEEP_THREADS,
    Comparison,
    command_line,
    etcd_phase,
    exit_on_sigterm,
    load_line,
    machine_line,
    matplotlib_available,
    plot,
    plot_title,
    ratio_block,
)
from throughput import (
    Latency,
    concurrent,
    local_follower,
    local_leader,
    peers,
    pysyncobj_follow,
    pysyncobj_lead,
    pysyncobj_missing,
    pysyncobj_retrying,
    sequential,
)

from catga_sync import locks
from catga_sync.node import ClusterNode
from tests.e2e.harness import free_ports

WARMUP = 50
TOOZ_POSTGRES_HANDOFFS = 608.0  # per second, the figure (not measured here)
Maker = Callable[[], Callable[[], object]]


@dataclass
class LockFigures:
    """One system's lock figures from this run."""

    leader: Latency
    follower: Latency
    handoffs: list[tuple[int, float]] = field(default_factory=list)  # (grants, seconds) a run
    sweep: dict[int, float] = field(default_factory=dict)  # threads -> hand-offs/s (--plot)
    notes: list[str] = field(default_factory=list)

    @property
    def handoffs_per_second(self) -> float | None:
        if not self.handoffs:
            return None
        return statistics.median(n / s for n, s in self.handoffs)

    def handoff_line(self) -> str:
        rates = [n / s for n, s in self.handoffs]
        return (
            f"{statistics.median(rates):,.0f}/s ({min(rates):,.0f}-{max(rates):,.0f};"
            f" {len(rates)} runs, {sum(n for n, _ in self.handoffs):,} grants)"
        )


def handoffs(make_call: Maker, threads: int, seconds: float) -> tuple[int, float]:
    """``threads`` threads take turns holding one lock for ``seconds``; (grants, elapsed)."""
    grants, elapsed, _latencies = concurrent(make_call, threads, seconds)
    return grants, elapsed


def measure(
    args: argparse.Namespace, once: Callable[[], object], make_handoff: Maker | None
) -> tuple[Latency, list[tuple[int, float]], dict[int, float]]:
    """``args.runs`` runs of sequential acquire+release, each followed by a hand-off run of
    ``args.threads`` threads; then, with ``--plot``, one hand-off run per sweep point."""
    latency: Latency = Latency()
    rates: list[tuple[int, float]] = []
    for _ in range(args.runs):
        latency.runs.append(sequential(once, args.ops, WARMUP))
        if make_handoff is not None:
            rates.append(handoffs(make_handoff, args.threads, args.seconds))
    points: dict[int, float] = {}
    if args.plot and make_handoff is not None:
        for n in SWEEP_THREADS:
            grants, elapsed = handoffs(make_handoff, n, args.seconds)
            points[n] = grants / elapsed
    return latency, rates, points


def sequential_runs(args: argparse.Namespace, once: Callable[[], object]) -> Latency:
    return measure(args, once, None)[0]


# --------------------------------------------------------------------------------------------
# catga_sync


def acquire_release(node: ClusterNode, name: str) -> Callable[[], object]:
    def once() -> object:
        with locks.lock(node, name, ttl=LOCK_TTL, timeout=30):
            return None

    return once


def bench_catga(args: argparse.Namespace, state: Path) -> LockFigures:
    ports = free_ports(3)
    endpoints = [f"http://127.0.0.1:{p}" for p in ports]
    (state / "node0").mkdir(parents=True)
    with peers("catga", endpoints, state) as group:
        node = catga_node(endpoints[0], endpoints, "node0", str(state / "node0")).start()
        try:
            local_leader(node, group)
            leader, rates, points = measure(
                args,
                acquire_release(node, "bench-seq"),
                lambda: acquire_release(node, "bench-handoff"),
            )
            local_follower(node)
            follower = sequential_runs(args, acquire_release(node, "bench-seq"))
            return LockFigures(leader, follower, rates, points)
        finally:
            node.stop()


# --------------------------------------------------------------------------------------------
# etcd


def etcd_locker(url: str, name: str) -> Callable[[], object]:
    """A keep-alive connection and a lease of its own; each call locks ``name`` and unlocks it."""
    gateway = Gateway(url)
    lease = gateway.grant(int(LOCK_TTL) * 20)  # outlives a run: nobody keeps it alive
    key = b64(name)

    def once() -> object:
        gateway.unlock(gateway.lock(key, lease))
        return None

    return once


def bench_etcd(args: argparse.Namespace) -> LockFigures | str:
    with etcd_cluster(free_ports(6), args.etcd) as cluster:
        leader = cluster.wait_for_leader().client_url
        follower = cluster.follower().client_url
        at_leader, rates, points = measure(
            args,
            etcd_locker(leader, "bench-seq"),
            lambda: etcd_locker(leader, "bench-handoff"),
        )
        via_follower = sequential_runs(args, etcd_locker(follower, "bench-seq"))
        if cluster.wait_for_leader().client_url != leader:
            return "skipped: the leader changed during the measurement"
        return LockFigures(at_leader, via_follower, rates, points)


# --------------------------------------------------------------------------------------------
# PySyncObj


def bench_pysyncobj(args: argparse.Namespace, state: Path) -> LockFigures | str:
    missing = pysyncobj_missing()
    if missing:
        return missing
    retries = [0]
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(3)]
    with peers("pysyncobj-locks", endpoints, state) as group:
        counter = pysyncobj_counter(endpoints[0], endpoints, with_locks=True)
        manager: Any = counter.lock_manager
        try:
            acquire = pysyncobj_retrying(
                lambda: manager.tryAcquire("bench-seq", sync=True, timeout=10), retries
            )
            release = pysyncobj_retrying(
                lambda: manager.release("bench-seq", sync=True, timeout=10), retries
            )

            def once() -> object:
                if not acquire():
                    raise RuntimeError("PySyncObj refused a lock nobody else holds")
                return release()

            pysyncobj_lead(counter, group, endpoints[0])
            once()
            leader = sequential_runs(args, once)
            pysyncobj_follow(counter, endpoints[0])
            once()
            follower = sequential_runs(args, once)
            notes = ["ReplLockManager has no waiting acquire: no hand-off figure"]
            if retries[0]:
                notes.append(f"commands PySyncObj dropped, retried: {retries[0]}")
            return LockFigures(leader, follower, notes=notes)
        finally:
            counter.destroy()


# --------------------------------------------------------------------------------------------


def print_figures(figures: LockFigures, *, what: str, on: str, threads: int) -> None:
    def row(label: str, text: str) -> None:
        print(f"{label + ':':<44} {text}")

    row(f"{what}, leader, one thread", figures.leader.line())
    row(f"{what}, {on}, one thread", figures.follower.line())
    if figures.handoffs:
        row(f"hand-offs of one lock among {threads} threads", figures.handoff_line())
    if figures.sweep:
        print(
            "  by client threads (one run each, for the picture): "
            + ", ".join(f"{n}: {v:,.0f}/s" for n, v in figures.sweep.items())
        )
    for note in figures.notes:
        print(f"  ({note})")


def comparisons(results: dict[str, LockFigures], threads: int) -> dict[str, list[Comparison]]:
    ours, etcd, pso = (results.get(k) for k in ("catga", "etcd", "pysyncobj"))
    blocks: dict[str, list[Comparison]] = {"etcd": [], "PySyncObj": []}
    if ours is None:
        return blocks
    if etcd is not None:
        blocks["etcd"] = [
            Comparison(
                "acquire+release on the leader (in-process) / lock+unlock on the leader, p50",
                ours.leader.p50,
                etcd.leader.p50,
                "latency",
                1.0,
            ),
            Comparison(
                "acquire+release on a follower (in-process) / lock+unlock on the leader, p50",
                ours.follower.p50,
                etcd.leader.p50,
                "latency",
                1.2,
            ),
            Comparison(
                "acquire+release on a follower / lock+unlock via a follower, p50",
                ours.follower.p50,
                etcd.follower.p50,
                "latency",
            ),
            Comparison(
                f"hand-offs of one lock among {threads} threads",
                ours.handoffs_per_second,
                etcd.handoffs_per_second,
                "throughput",
            ),
        ]
    if pso is not None:
        blocks["PySyncObj"] = [
            Comparison(
                "acquire+release on the leader / tryAcquire+release on the leader, p50",
                ours.leader.p50,
                pso.leader.p50,
                "latency",
            ),
            Comparison(
                "acquire+release on a follower / tryAcquire+release on a follower, p50",
                ours.follower.p50,
                pso.follower.p50,
                "latency",
            ),
        ]
    return blocks


def write_plot(path: str, results: dict[str, LockFigures], title: str) -> None:
    names = {
        "catga": ("catga_sync", "follower"),
        "etcd": ("etcd lock", "via follower"),
        "pysyncobj": ("PySyncObj ReplLock", "follower"),
    }
    latencies: dict[str, list[float]] = {}
    for key, (name, on) in names.items():
        figures = results.get(key)
        if figures is not None:
            latencies[f"{name}, leader"] = [x for run in figures.leader.runs for x in run]
            latencies[f"{name}, {on}"] = [x for run in figures.follower.runs for x in run]
    plot(
        path,
        title,
        latencies,
        "acquire + release of one lock, one thread (box: p25-p75, whiskers: p1-p99; p50 in ms)",
        {names[key][0]: figures.sweep for key, figures in results.items() if figures.sweep},
        "hand-offs of one lock on the leader against client threads (1 run per point)",
        "hand-offs/s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=500, help="acquire+release per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a hand-off run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--skip", default="", help="comma-separated: catga,pysyncobj,etcd")
    parser.add_argument("--etcd", default="etcd", help="the etcd binary (default: on PATH)")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of the figures (matplotlib)")
    add_transport_options(parser)
    args = parser.parse_args()
    use_transport_options(args)
    if args.plot and not matplotlib_available():
        parser.error(MATPLOTLIB_MISSING)
    exit_on_sigterm()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    skip = set(filter(None, args.skip.split(",")))
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(
        f"{args.runs} runs per figure; sequential: {WARMUP} warm-up + {args.ops} acquire+release "
        f"per run; hand-offs: {args.threads} threads for {args.seconds:g} s per run"
    )
    results: dict[str, LockFigures] = {}
    switch_interval = sys.getswitchinterval()
    with tempfile.TemporaryDirectory(prefix="catga-bench-locks-") as tmp:
        if "catga" not in skip:
            print("catga_sync: 3 processes, SQLite synchronous=FULL (fsync per Ready)")
            results["catga"] = bench_catga(args, Path(tmp) / "catga")
            print_figures(
                results["catga"], what="acquire+release", on="follower", threads=args.threads
            )
        # Our node lowers the switch interval for its own process; the others run at Python's.
        sys.setswitchinterval(switch_interval)
        if "pysyncobj" not in skip:
            print("\nPySyncObj: 3 processes, ReplLockManager, in-memory log (no fsync)")
            theirs = bench_pysyncobj(args, Path(tmp) / "pysyncobj")
            if isinstance(theirs, str):
                print(f"PySyncObj: {theirs}")
            else:
                results["pysyncobj"] = theirs
                print_figures(
                    theirs, what="tryAcquire+release", on="follower", threads=args.threads
                )
    if "etcd" not in skip:
        from_etcd = etcd_phase(
            args.etcd,
            "lock+unlock through the HTTP/JSON gateway, one keep-alive connection and one lease"
            " per client thread",
            lambda: bench_etcd(args),
        )
        if from_etcd is not None:
            results["etcd"] = from_etcd
            print_figures(from_etcd, what="lock+unlock", on="via follower", threads=args.threads)
    print()
    for other, block in comparisons(results, args.threads).items():
        for line in ratio_block(other, block):
            print(line)
    ours = results.get("catga")
    tooz = Comparison(
        f"hand-offs of one lock among {args.threads} threads",
        ours.handoffs_per_second if ours is not None else None,
        TOOZ_POSTGRES_HANDOFFS,
        "throughput",
        1.0,
    )
    other = f"tooz+PostgreSQL ({TOOZ_POSTGRES_HANDOFFS:.0f}/s: the issue's figure, not this run's)"
    for line in ratio_block(other, [tooz]):
        print(line)
    print(load_line("after"))
    if args.plot:
        write_plot(args.plot, results, plot_title("locks.py", results, args.etcd, args.runs))
        print(f"picture: {args.plot}")


if __name__ == "__main__":
    main()
