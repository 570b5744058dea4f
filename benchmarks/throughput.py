"""Command latency and throughput of a durable 3-node cluster, beside PySyncObj on the same machine.

Three real processes on loopback, durable SQLite state (a temporary directory, ``synchronous
FULL``: every Ready is fsynced before its acknowledgements leave). Prints, with the machine, the
Python version and how many runs and operations each figure took:

- sequential latency (p50/p99) of one command (a counter increment through a registered state
  machine) proposed in-process on the leader, and in-process on a follower (forwarded to the
  leader over HTTP, answered once applied locally);
- commands/s with ``--threads`` threads in-process on the leader;
- the same over HTTP: ``POST /orders`` of the example app (three ``example_flask`` processes),
  sequential to the leader and to a follower, and ``--threads`` threads to the leader;
- PySyncObj (``appendEntriesUseBatch=False``, a ``@replicated`` counter, its default in-memory
  log: no fsync at all) measured the same way, and the ratios.

"In-process" means this script's own process is one of the three nodes (the other two run
``benchmarks/bench_node.py``), so a command costs no client hop.

    python benchmarks/throughput.py [--ops 2000] [--seconds 5] [--runs 3] [--threads 16]
        [--skip http,pysyncobj]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_node import Counter, catga_node, pysyncobj_counter

from tests.e2e.harness import ExampleCluster, free_ports, poll

ROOT = Path(__file__).resolve().parents[1]
NODE_SCRIPT = ROOT / "benchmarks" / "bench_node.py"
WARMUP = 200


# --------------------------------------------------------------------------------------------
# Measuring


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Latency:
    """Sequential latencies of several runs, in seconds."""

    runs: list[list[float]] = field(default_factory=list)

    def line(self) -> str:
        pooled = [x for run in self.runs for x in run]
        p50s = [percentile(run, 50) * 1e3 for run in self.runs]
        p50, p99 = percentile(pooled, 50) * 1e3, percentile(pooled, 99) * 1e3
        return (
            f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
            f"  (run p50s {min(p50s):.2f}-{max(p50s):.2f}; {len(self.runs)} runs x "
            f"{len(self.runs[0])} ops)"
        )

    @property
    def p50(self) -> float:
        return percentile([x for run in self.runs for x in run], 50)


@dataclass
class Rate:
    """Throughput of several runs: (commands, seconds, latencies) each."""

    runs: list[tuple[int, float, list[float]]] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return statistics.median(n / s for n, s, _ in self.runs)

    def line(self) -> str:
        rates = [n / s for n, s, _ in self.runs]
        pooled = [x for _, _, lat in self.runs for x in lat]
        return (
            f"{statistics.median(rates):8,.0f} commands/s ({min(rates):,.0f}-{max(rates):,.0f}; "
            f"{len(self.runs)} runs of {self.runs[0][1]:.1f} s, {sum(n for n, _, _ in self.runs):,}"
            f" commands); latency p50 {percentile(pooled, 50) * 1e3:.2f} ms "
            f"p99 {percentile(pooled, 99) * 1e3:.2f} ms"
        )


def sequential(call: Callable[[], object], ops: int, warmup: int = WARMUP) -> list[float]:
    for _ in range(warmup):
        call()
    latencies = []
    clock = time.perf_counter
    for _ in range(ops):
        started = clock()
        call()
        latencies.append(clock() - started)
    return latencies


def concurrent(
    make_call: Callable[[], Callable[[], object]], threads: int, seconds: float
) -> tuple[int, float, list[float]]:
    """``threads`` threads call as fast as they can for ``seconds``; (count, elapsed, latencies)."""
    start = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    deadline = [0.0]

    def worker(k: int) -> None:
        call = make_call()
        mine = latencies[k]
        clock = time.perf_counter
        start.wait()
        try:
            while True:
                started = clock()
                if started >= deadline[0]:
                    return
                call()
                mine.append(clock() - started)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for thread in pool:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in pool:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} of {threads} threads failed: {errors[0]!r}")
    flat = [x for lat in latencies for x in lat]
    return len(flat), elapsed, flat


def measure(
    args: argparse.Namespace, call: Callable[[], object], make_call: Callable[[], Any] | None
) -> tuple[Latency, Rate | None]:
    latency, rate = Latency(), Rate() if make_call else None
    for _ in range(args.runs):
        latency.runs.append(sequential(call, args.ops))
        if make_call is not None and rate is not None:
            rate.runs.append(concurrent(make_call, args.threads, args.seconds))
    return latency, rate


# --------------------------------------------------------------------------------------------
# The other two nodes


class Peers:
    """The two ``bench_node.py`` processes; a line on their stdin asks a leader to transfer."""

    def __init__(self, kind: str, endpoints: Sequence[str], state: Path) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        members = ",".join(endpoints)
        for k, endpoint in enumerate(endpoints[1:], start=1):
            node_state = state / f"node{k}"
            node_state.mkdir(parents=True, exist_ok=True)
            log = open(state / f"node{k}.log", "ab")  # noqa: SIM115
            self.processes.append(
                subprocess.Popen(
                    [
                        *(sys.executable, str(NODE_SCRIPT), kind, "--endpoint", endpoint),
                        *(
                            "--members",
                            members,
                            "--node-id",
                            f"node{k}",
                            "--state",
                            str(node_state),
                        ),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def transfer_to(self, target: str) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"transfer {target}\n".encode())
            process.stdin.flush()

    def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()  # the node stops when its stdin closes
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@contextmanager
def peers(kind: str, endpoints: Sequence[str], state: Path) -> Iterator[Peers]:
    group = Peers(kind, endpoints, state)
    try:
        yield group
    finally:
        group.stop()


# --------------------------------------------------------------------------------------------
# catga_sync, in-process


def bench_catga(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    ports = free_ports(3)
    endpoints = [f"http://127.0.0.1:{p}" for p in ports]
    (state / "node0").mkdir(parents=True)
    with peers("catga", endpoints, state) as group:
        node = catga_node(endpoints[0], endpoints, "node0", str(state / "node0")).start()
        try:
            counter = node.state(Counter)

            def settled() -> bool:
                s = node.status
                return s.leader_id is not None and s.commit_term == s.term

            poll(settled, 30, "a leader")
            deadline = time.monotonic() + 30
            while not node.status.is_leader:
                assert time.monotonic() < deadline, "could not make the local node the leader"
                group.transfer_to(node.raft_id)
                with suppress(TimeoutError):
                    node.wait_for(lambda s: s.is_leader, 2)
            poll(settled, 10, "the local node to lead")
            readies_before, persisted_before = node.stats.readies, node.stats.entries_persisted
            leader = measure(args, counter.increment, lambda: counter.increment)
            batch = (node.stats.entries_persisted - persisted_before) / max(
                1, node.stats.readies - readies_before
            )
            node.transfer_leadership()
            poll(lambda: settled() and not node.status.is_leader, 10, "another leader")
            follower = measure(args, counter.increment, None)
            return {"leader": leader, "follower": follower, "entries_per_ready": batch}
        finally:
            node.stop()


# --------------------------------------------------------------------------------------------
# The example app over HTTP


def order_poster(port: int) -> Callable[[], object]:
    """A keep-alive connection that POSTs one order per call and checks the 201."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"customer": "bench", "amount": 1}).encode()
    headers = {"Content-Type": "application/json"}

    def post() -> object:
        conn.request("POST", "/orders", body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 201:
            raise RuntimeError(f"POST /orders answered {response.status}: {data[:200]!r}")
        return data

    return post


def bench_http(args: argparse.Namespace, state: Path) -> dict[str, Any] | str:
    state.mkdir(parents=True)
    cluster = ExampleCluster(state)
    cluster.start()
    try:
        leader = cluster.wait_for_leader(timeout=30)
        try:
            order_poster(leader.port)()
        except (RuntimeError, OSError) as exc:
            return f"skipped: {exc}"
        follower = next(n for n in cluster.nodes if n is not leader)
        at_leader = measure(args, order_poster(leader.port), lambda: order_poster(leader.port))
        at_follower = measure(args, order_poster(follower.port), None)
        if cluster.leader() is not leader:
            return "skipped: the leader changed during the measurement"
        return {"leader": at_leader, "follower": at_follower}
    finally:
        for node in cluster.nodes:
            if node.alive():
                node.terminate()


# --------------------------------------------------------------------------------------------
# PySyncObj, in-process


def bench_pysyncobj(args: argparse.Namespace, state: Path) -> dict[str, Any] | str:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return "skipped: PySyncObj is not installed (pip install pysyncobj)"
    from pysyncobj import SyncObjException

    retries = [0]
    ports = free_ports(3)
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    with peers("pysyncobj", endpoints, state) as group:
        counter = pysyncobj_counter(endpoints[0], endpoints)
        try:

            def leader() -> str | None:
                found = counter.getStatus()["leader"]
                return None if found is None else str(found)

            def increment() -> object:
                # Like our submit(), retry a command its leader dropped (a leader change).
                for attempt in range(50):
                    try:
                        return counter.increment(1, sync=True, timeout=10)
                    except SyncObjException:
                        retries[0] += 1
                        time.sleep(0.005 * min(attempt + 1, 20))
                raise RuntimeError("PySyncObj dropped a command 50 times")

            poll(lambda: leader() is not None and counter.isReady(), 30, "a PySyncObj leader")
            deadline = time.monotonic() + 30
            while leader() != endpoints[0]:
                assert time.monotonic() < deadline, "could not make the local node the leader"
                group.transfer_to(endpoints[0])
                time.sleep(1)
            increment()
            at_leader = measure(args, increment, lambda: increment)
            counter.transferLeadership()
            poll(lambda: leader() not in (None, endpoints[0]), 10, "another PySyncObj leader")
            increment()
            at_follower = measure(args, increment, None)
            return {"leader": at_leader, "follower": at_follower, "retries": retries[0]}
        finally:
            counter.destroy()


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="sequential commands per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a throughput run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--skip", default="", help="comma-separated: catga,http,pysyncobj")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per RPC
    skip = set(filter(None, args.skip.split(",")))
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}"
    )
    print(
        f"{args.runs} runs per figure; sequential: {WARMUP} warm-up + {args.ops} commands per "
        f"run; throughput: {args.threads} threads for {args.seconds:g} s per run"
    )
    print("catga_sync: 3 processes, SQLite synchronous=FULL (fsync per Ready)\n")
    switch_interval = sys.getswitchinterval()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="catga-bench-") as tmp:
        if "catga" not in skip:
            ours = bench_catga(args, Path(tmp) / "catga")
            results["catga"] = ours
            print(f"in-process, leader, sequential:    {ours['leader'][0].line()}")
            print(f"in-process, follower, sequential:  {ours['follower'][0].line()}")
            print(f"in-process, leader, {args.threads} threads:    {ours['leader'][1].line()}")
            print(f"  (entries per Ready on the leader: {ours['entries_per_ready']:.1f})")
        # Our node lowers the switch interval for its own process; PySyncObj runs at Python's.
        sys.setswitchinterval(switch_interval)
        if "http" not in skip:
            over_http = bench_http(args, Path(tmp) / "http")
            if isinstance(over_http, str):
                print(f"HTTP POST /orders: {over_http}")
            else:
                results["http"] = over_http
                print(f"HTTP POST /orders, leader, sequential:   {over_http['leader'][0].line()}")
                print(f"HTTP POST /orders, follower, sequential: {over_http['follower'][0].line()}")
                print(
                    f"HTTP POST /orders, leader, {args.threads} threads:   "
                    f"{over_http['leader'][1].line()}"
                )
        if "pysyncobj" not in skip:
            print("\nPySyncObj: 3 processes, appendEntriesUseBatch=False, in-memory log (no fsync)")
            theirs = bench_pysyncobj(args, Path(tmp) / "pysyncobj")
            if isinstance(theirs, str):
                print(f"PySyncObj: {theirs}")
            else:
                results["pysyncobj"] = theirs
                print(f"in-process, leader, sequential:    {theirs['leader'][0].line()}")
                print(f"in-process, follower, sequential:  {theirs['follower'][0].line()}")
                if theirs["retries"]:
                    print(f"  (commands PySyncObj dropped, retried: {theirs['retries']})")
                print(
                    f"in-process, leader, {args.threads} threads:    {theirs['leader'][1].line()}"
                )
    if "catga" in results and "pysyncobj" in results:
        ours, theirs = results["catga"], results["pysyncobj"]
        print("\ncatga_sync / PySyncObj (latency: <1 is faster; throughput: >1 is faster)")
        for what, key in (("leader", "leader"), ("follower", "follower")):
            ratio = ours[key][0].p50 / theirs[key][0].p50
            print(f"  sequential p50 latency, {what}: {ratio:.2f}")
        ratio = ours["leader"][1].per_second / theirs["leader"][1].per_second
        print(f"  {args.threads}-thread throughput, leader: {ratio:.2f}")


if __name__ == "__main__":
    main()
