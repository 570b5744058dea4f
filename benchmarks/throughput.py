"""Command latency and throughput of a durable 3-node cluster, beside etcd and PySyncObj.

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
  log: no fsync at all) measured the same way;
- etcd, when ``etcd`` is on ``PATH`` (Debian: ``apt-get install etcd-server``): a three-member
  cluster on loopback (:mod:`etcd_cluster`), a put through its HTTP/JSON gateway on the leader
  and via a follower, sequential, and with 8 and ``--threads`` threads, each thread with its own
  keep-alive connection, as the ``POST /orders`` clients;
- the ratio lines ``catga_sync / etcd`` and ``catga_sync / PySyncObj`` (latency: < 1 is
  faster; throughput: > 1 is faster), with the issue's aim where it set one; the machine, the
  command line and the load average before and after.

"In-process" means this script's own process is one of the three nodes (the other two run
``benchmarks/bench_node.py``), so a command costs no client hop; an etcd put, like
``POST /orders``, costs one. ``--plot FILE`` also measures throughput at 1, 2, 4, 8 and 16
client threads (one run each) and writes a PNG of it beside the latency distributions
(matplotlib: ``pip install -e '.[bench]'``).

    python benchmarks/throughput.py [--ops 2000] [--seconds 5] [--runs 3] [--threads 16]
        [--skip catga,http,pysyncobj,etcd] [--etcd PATH] [--plot FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
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

from bench_node import (
    Counter,
    add_transport_options,
    catga_node,
    pysyncobj_counter,
    use_transport_options,
)
from etcd_cluster import (
    Gateway,
    b64,
    etcd_cluster,
    wait_or_kill,
)
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

from catga_sync.node import ClusterNode
from tests.e2e.harness import ExampleCluster, free_ports, poll

ROOT = Path(__file__).resolve().parents[1]
NODE_SCRIPT = ROOT / "benchmarks" / "bench_node.py"
WARMUP = 200
ETCD_THREADS = 8  # the etcd figure; etcd is also measured at --threads


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


class Batching:
    """What the leader's Raft loop did during the throughput runs only (not the sequential
    ones): entries per Ready, and per synced write (an fsync)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.entries = self.readies = self.fsyncs = 0
        self._at: tuple[int, int, int] = (0, 0, 0)

    def _now(self) -> tuple[int, int, int]:
        stats = self.node.stats
        return stats.entries_persisted, stats.readies, sum(stats.persist_latency_seconds.counts)

    def begin(self) -> None:
        self._at = self._now()

    def end(self) -> None:
        now = self._now()
        self.entries += now[0] - self._at[0]
        self.readies += now[1] - self._at[1]
        self.fsyncs += now[2] - self._at[2]

    def note(self) -> str:
        return (
            f"during the 16-thread runs, entries per Ready on the leader: "
            f"{self.entries / max(1, self.readies):.1f}, per fsync: "
            f"{self.entries / max(1, self.fsyncs):.1f}"
        )


def measure(
    args: argparse.Namespace,
    call: Callable[[], object],
    make_call: Callable[[], Callable[[], object]] | None,
    threads: Sequence[int] = (),
    batching: Batching | None = None,
) -> tuple[Latency, dict[int, Rate]]:
    """``args.runs`` runs of: ``args.ops`` sequential calls, then ``args.seconds`` of each
    number of ``threads`` (each thread with its own ``make_call()``)."""
    latency, rates = Latency(), {n: Rate() for n in threads}
    for _ in range(args.runs):
        latency.runs.append(sequential(call, args.ops))
        for n, rate in rates.items():
            assert make_call is not None
            if batching is not None:
                batching.begin()
            rate.runs.append(concurrent(make_call, n, args.seconds))
            if batching is not None:
                batching.end()
    return latency, rates


def sweep(
    args: argparse.Namespace, make_call: Callable[[], Callable[[], object]]
) -> dict[int, float]:
    """Operations/s at 1, 2, 4, 8 and 16 client threads, one run of ``args.seconds`` each, for
    the picture (only with ``--plot``)."""
    if not args.plot:
        return {}
    points = {}
    for n in SWEEP_THREADS:
        count, elapsed, _ = concurrent(make_call, n, args.seconds)
        points[n] = count / elapsed
    return points


@dataclass
class Figures:
    """One system's figures from this run: sequential latency on the leader and on a follower,
    throughput on the leader by client threads, and the sweep of ``--plot``."""

    leader: Latency
    follower: Latency
    rates: dict[int, Rate]
    sweep: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def per_second(self, threads: int) -> float | None:
        rate = self.rates.get(threads)
        return rate.per_second if rate is not None and rate.runs else None


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
        wait_or_kill(self.processes, 15)


@contextmanager
def peers(kind: str, endpoints: Sequence[str], state: Path) -> Iterator[Peers]:
    group = Peers(kind, endpoints, state)
    try:
        yield group
    finally:
        group.stop()


# --------------------------------------------------------------------------------------------
# catga_sync, in-process


def local_leader(node: ClusterNode, group: Peers) -> None:
    """Wait for a leader and make ``node`` (this process's) the leader."""

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


def local_follower(node: ClusterNode) -> None:
    """Hand ``node``'s leadership to another member and wait for it to commit in its term."""
    node.transfer_leadership()

    def settled() -> bool:
        s = node.status
        return s.leader_id is not None and s.commit_term == s.term and not s.is_leader

    poll(settled, 10, "another leader")


def bench_catga(args: argparse.Namespace, state: Path) -> Figures:
    ports = free_ports(3)
    endpoints = [f"http://127.0.0.1:{p}" for p in ports]
    (state / "node0").mkdir(parents=True)
    with peers("catga", endpoints, state) as group:
        node = catga_node(endpoints[0], endpoints, "node0", str(state / "node0")).start()
        try:
            counter = node.state(Counter)
            local_leader(node, group)
            batching = Batching(node)
            leader, rates = measure(
                args, counter.increment, lambda: counter.increment, (args.threads,), batching
            )
            points = sweep(args, lambda: counter.increment)
            local_follower(node)
            follower, _ = measure(args, counter.increment, None)
            note = batching.note()
            return Figures(leader, follower, rates, points, [note])
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


def bench_http(args: argparse.Namespace, state: Path, attempts: int = 2) -> Figures | str:
    """The example app's ``POST /orders``; measured again (``attempts`` in all) when the leader
    changed meanwhile, as it can on a loaded machine at the guide's 150 ms election timeout."""
    outcome: Figures | str = "skipped: not measured"
    for attempt in range(1, attempts + 1):
        outcome = http_once(args, state / f"attempt{attempt}")
        if not isinstance(outcome, str) or "leader changed" not in outcome:
            break
        print(f"HTTP POST /orders: the leader changed during attempt {attempt} of {attempts}")
    return outcome


def http_once(args: argparse.Namespace, state: Path) -> Figures | str:
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
        at_leader, rates = measure(
            args, order_poster(leader.port), lambda: order_poster(leader.port), (args.threads,)
        )
        points = sweep(args, lambda: order_poster(leader.port))
        at_follower, _ = measure(args, order_poster(follower.port), None)
        if cluster.leader() is not leader:
            return "skipped: the leader changed during the measurement"
        return Figures(at_leader, at_follower, rates, points)
    finally:
        for node in cluster.nodes:
            if node.alive():
                node.terminate()


# --------------------------------------------------------------------------------------------
# PySyncObj, in-process


def pysyncobj_missing() -> str | None:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return "skipped: PySyncObj is not installed (pip install pysyncobj)"
    return None


def pysyncobj_retrying(call: Callable[[], Any], retries: list[int]) -> Callable[[], Any]:
    """``call`` again when PySyncObj drops it (a leader change), as our ``submit()`` does;
    ``retries[0]`` counts the drops."""
    from pysyncobj import SyncObjException

    def retrying() -> Any:
        for attempt in range(50):
            try:
                return call()
            except SyncObjException:
                retries[0] += 1
                time.sleep(0.005 * min(attempt + 1, 20))
        raise RuntimeError("PySyncObj dropped a command 50 times")

    return retrying


def pysyncobj_leader(counter: Any) -> str | None:
    found = counter.getStatus()["leader"]
    return None if found is None else str(found)


def pysyncobj_lead(counter: Any, group: Peers, endpoint: str) -> None:
    """Wait for a PySyncObj leader and make ``counter`` (at ``endpoint``) the leader."""
    poll(
        lambda: pysyncobj_leader(counter) is not None and counter.isReady(),
        30,
        "a PySyncObj leader",
    )
    deadline = time.monotonic() + 30
    while pysyncobj_leader(counter) != endpoint:
        assert time.monotonic() < deadline, "could not make the local node the leader"
        group.transfer_to(endpoint)
        time.sleep(1)


def pysyncobj_follow(counter: Any, endpoint: str) -> None:
    counter.transferLeadership()
    poll(lambda: pysyncobj_leader(counter) not in (None, endpoint), 10, "another PySyncObj leader")


def bench_pysyncobj(args: argparse.Namespace, state: Path) -> Figures | str:
    missing = pysyncobj_missing()
    if missing:
        return missing
    retries = [0]
    ports = free_ports(3)
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    with peers("pysyncobj", endpoints, state) as group:
        counter = pysyncobj_counter(endpoints[0], endpoints)
        try:
            increment = pysyncobj_retrying(
                lambda: counter.increment(1, sync=True, timeout=10), retries
            )
            pysyncobj_lead(counter, group, endpoints[0])
            increment()
            at_leader, rates = measure(args, increment, lambda: increment, (args.threads,))
            points = sweep(args, lambda: increment)
            pysyncobj_follow(counter, endpoints[0])
            increment()
            at_follower, _ = measure(args, increment, None)
            notes = [f"commands PySyncObj dropped, retried: {retries[0]}"] if retries[0] else []
            return Figures(at_leader, at_follower, rates, points, notes)
        finally:
            counter.destroy()


# --------------------------------------------------------------------------------------------
# etcd, over its HTTP/JSON gateway


def etcd_putter(url: str) -> Callable[[], object]:
    """A keep-alive connection to one member that puts one key per call."""
    gateway = Gateway(url)
    key, value = b64("bench-counter"), b64("1")
    return lambda: gateway.put(key, value)


def bench_etcd(args: argparse.Namespace) -> Figures | str:
    with etcd_cluster(free_ports(6), args.etcd) as cluster:
        leader = cluster.wait_for_leader().client_url
        follower = cluster.follower().client_url
        threads = sorted({ETCD_THREADS, args.threads})
        at_leader, rates = measure(args, etcd_putter(leader), lambda: etcd_putter(leader), threads)
        points = sweep(args, lambda: etcd_putter(leader))
        at_follower, _ = measure(args, etcd_putter(follower), None)
        if cluster.wait_for_leader().client_url != leader:
            return "skipped: the leader changed during the measurement"
        return Figures(at_leader, at_follower, rates, points)


# --------------------------------------------------------------------------------------------


def print_figures(figures: Figures, *, on: str, what: str = "in-process") -> None:
    def row(label: str, text: str) -> None:
        print(f"{label + ':':<40} {text}")

    row(f"{what}, leader, sequential", figures.leader.line())
    row(f"{what}, {on}, sequential", figures.follower.line())
    for n, rate in figures.rates.items():
        row(f"{what}, leader, {n} threads", rate.line())
    if figures.sweep:
        print(
            "  by client threads (one run each, for the picture): "
            + ", ".join(f"{n}: {v:,.0f}/s" for n, v in figures.sweep.items())
        )
    for note in figures.notes:
        print(f"  ({note})")


def comparisons(results: dict[str, Figures], threads: int) -> dict[str, list[Comparison]]:
    """The ratio lines: catga_sync's figures over etcd's and PySyncObj's."""
    ours, http, etcd, pso = (results.get(k) for k in ("catga", "http", "etcd", "pysyncobj"))
    blocks: dict[str, list[Comparison]] = {"etcd": [], "PySyncObj": []}
    if etcd is not None:
        if ours is not None:
            blocks["etcd"] += [
                Comparison(
                    "sequential command on the leader (in-process) / put on the leader, p50",
                    ours.leader.p50,
                    etcd.leader.p50,
                    "latency",
                    1.0,
                ),
                Comparison(
                    "sequential command on a follower (in-process) / put via a follower, p50",
                    ours.follower.p50,
                    etcd.follower.p50,
                    "latency",
                    1.2,
                ),
                Comparison(
                    f"{threads} threads in-process on the leader / put, {threads} threads",
                    ours.per_second(threads),
                    etcd.per_second(threads),
                    "throughput",
                ),
            ]
        if http is not None:
            blocks["etcd"] += [
                Comparison(
                    "POST /orders to the leader / put on the leader, p50 (both over HTTP)",
                    http.leader.p50,
                    etcd.leader.p50,
                    "latency",
                ),
                Comparison(
                    "POST /orders to a follower / put via a follower, p50 (both over HTTP)",
                    http.follower.p50,
                    etcd.follower.p50,
                    "latency",
                ),
                Comparison(
                    f"POST /orders, {threads} threads / put, {ETCD_THREADS} threads",
                    http.per_second(threads),
                    etcd.per_second(ETCD_THREADS),
                    "throughput",
                    1.5,
                ),
                Comparison(
                    f"POST /orders, {threads} threads / put, {threads} threads",
                    http.per_second(threads),
                    etcd.per_second(threads),
                    "throughput",
                ),
            ]
    if pso is not None and ours is not None:
        blocks["PySyncObj"] += [
            Comparison(
                "sequential command on the leader, p50", ours.leader.p50, pso.leader.p50, "latency"
            ),
            Comparison(
                "sequential command on a follower, p50",
                ours.follower.p50,
                pso.follower.p50,
                "latency",
            ),
            Comparison(
                f"{threads} threads in-process on the leader",
                ours.per_second(threads),
                pso.per_second(threads),
                "throughput",
                1.0,
            ),
        ]
    return blocks


def write_plot(path: str, results: dict[str, Figures], header: str) -> None:
    names = {
        "catga": "catga_sync",
        "http": "catga_sync POST /orders",
        "etcd": "etcd put",
        "pysyncobj": "PySyncObj",
    }
    latencies: dict[str, list[float]] = {}
    for key, name in names.items():
        figures = results.get(key)
        if figures is None:
            continue
        latencies[f"{name}, leader"] = [x for run in figures.leader.runs for x in run]
        on = "via follower" if key == "etcd" else "follower"
        latencies[f"{name}, {on}"] = [x for run in figures.follower.runs for x in run]
    plot(
        path,
        header,
        latencies,
        "sequential commands: latency (box: p25-p75, whiskers: p1-p99; p50 in ms above)",
        {
            f"{names[key]}{'' if key in ('http', 'etcd') else ' (in-process)'}": figures.sweep
            for key, figures in results.items()
        },
        "throughput on the leader against client threads (1 run per point)",
        "commands/s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="sequential commands per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a throughput run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--skip", default="", help="comma-separated: catga,http,pysyncobj,etcd")
    parser.add_argument("--etcd", default="etcd", help="the etcd binary (default: on PATH)")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of the figures (matplotlib)")
    add_transport_options(parser)
    args = parser.parse_args()
    use_transport_options(args)
    if args.plot and not matplotlib_available():
        parser.error(MATPLOTLIB_MISSING)
    exit_on_sigterm()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per RPC
    skip = set(filter(None, args.skip.split(",")))
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(
        f"{args.runs} runs per figure; sequential: {WARMUP} warm-up + {args.ops} commands per "
        f"run; throughput: {args.threads} threads (etcd also {ETCD_THREADS}) for "
        f"{args.seconds:g} s per run"
    )
    print("catga_sync: 3 processes, SQLite synchronous=FULL (fsync per Ready)\n")
    switch_interval = sys.getswitchinterval()
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="catga-bench-") as tmp:
        if "catga" not in skip:
            results["catga"] = bench_catga(args, Path(tmp) / "catga")
            print_figures(results["catga"], on="follower")
        # Our node lowers the switch interval for its own process; the others run at Python's.
        sys.setswitchinterval(switch_interval)
        if "http" not in skip:
            over_http = bench_http(args, Path(tmp) / "http")
            if isinstance(over_http, str):
                print(f"HTTP POST /orders: {over_http}")
            else:
                results["http"] = over_http
                print_figures(over_http, on="follower", what="HTTP POST /orders")
        if "pysyncobj" not in skip:
            print("\nPySyncObj: 3 processes, appendEntriesUseBatch=False, in-memory log (no fsync)")
            theirs = bench_pysyncobj(args, Path(tmp) / "pysyncobj")
            if isinstance(theirs, str):
                print(f"PySyncObj: {theirs}")
            else:
                results["pysyncobj"] = theirs
                print_figures(theirs, on="follower")
    if "etcd" not in skip:
        from_etcd = etcd_phase(
            args.etcd,
            "puts through the HTTP/JSON gateway, one keep-alive connection per client thread",
            lambda: bench_etcd(args),
        )
        if from_etcd is not None:
            results["etcd"] = from_etcd
            print_figures(from_etcd, on="via follower", what="put")
    print()
    for other, block in comparisons(results, args.threads).items():
        for line in ratio_block(other, block):
            print(line)
    print(load_line("after"))
    if args.plot:
        title = plot_title("throughput.py", results, args.etcd, args.runs)
        write_plot(args.plot, results, title)
        print(f"picture: {args.plot}")


if __name__ == "__main__":
    main()
