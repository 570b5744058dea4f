"""How the figures move with the size of the state: 1,000 to 1,000,000 orders.

For each size (``--orders 1000,10000,100000,1000000``), a fresh cluster of three
``bench_node.py`` processes on loopback (durable SQLite, ``synchronous FULL``, the guide's 150/50
ms timings, a snapshot every :data:`~bench_node.ORDERS_SNAPSHOT_EVERY` entries), then:

- **load**: the orders, :data:`BATCH` per command, through a
  :class:`~catga_sync.client.ClusterClient` (how long; the state grows, the log stays short);
- **snapshot**: ``catga snapshot save FILE`` (the leader takes a snapshot after a read barrier
  and sends it): seconds, and the file's size;
- **RSS** of every node, and the size of the leader's SQLite file;
- **restart**: SIGKILL of a follower, then the same process started again, until it has applied
  the leader's commit index (it loads its latest snapshot and replays the entries after it);
- **catch-up**: a fourth node started with ``--join``, added with ``catga members add`` (which
  returns once it is a voter), until it has applied the leader's commit index: the leader sends
  it the whole state as a snapshot over the peer RPC.

Then each figure as a multiple of the first size's: which grows with the state, and how.

    python benchmarks/scale_state.py [--orders 1000,10000,100000,1000000] [--plot FILE]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_node import OrderBook
from failover import rss_mib
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
from throughput import NODE_SCRIPT, ROOT, free_ports, wait_or_kill

from catga_sync.client import ClusterClient

BATCH = 5_000
"""Orders per load command (one log entry)."""


@dataclass(frozen=True, slots=True)
class StateFigures:
    orders: int
    load_seconds: float
    snapshot_seconds: float
    snapshot_mib: float
    state_file_mib: float
    rss_mib: tuple[float, ...]
    restart_seconds: float
    add_seconds: float
    catch_up_seconds: float


class Node:
    """One ``bench_node.py catga-orders`` process."""

    def __init__(self, endpoint: str, members: Sequence[str], k: int, state: Path) -> None:
        self.endpoint = endpoint
        self.members = list(members)
        self.k = k
        self.state = state / f"node{k}"
        self.state.mkdir(parents=True, exist_ok=True)
        self.log = state / f"node{k}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, join: bool = False) -> Node:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, str(NODE_SCRIPT), "catga-orders"),
                    *("--endpoint", self.endpoint, "--members", ",".join(self.members)),
                    *("--node-id", f"node{self.k}", "--state", str(self.state)),
                    *(["--join"] if join else []),
                ],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the node stops when its stdin closes
            wait_or_kill([self.process], 15)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def applied(self) -> int:
        """Its last applied index; -1 while it does not answer."""
        try:
            with ClusterClient([self.endpoint], timeout=2) as client:
                return client.status(timeout=2).last_applied
        except Exception:
            return -1


def wait_until(what: str, condition: object, timeout: float) -> float:
    """Seconds until ``condition()`` holds; fails past ``timeout``."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def catga(*argv: str) -> float:
    """Run the ``catga`` CLI; its wall time in seconds. Fails on a non-zero exit."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "catga_sync", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"catga {' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return time.monotonic() - started


def load_orders(book: Any, orders: int) -> None:
    """Load ``orders`` orders into the ``OrderBook`` handle ``book``, :data:`BATCH` per
    command."""
    for start in range(0, orders, BATCH):
        book.load(start, min(BATCH, orders - start))


def measure_size(orders: int, state: Path) -> StateFigures:
    ports = free_ports(4)
    endpoints = [f"http://127.0.0.1:{p}" for p in ports]
    voters = endpoints[:3]
    nodes = [Node(e, voters, k, state) for k, e in enumerate(voters)]
    newcomer = Node(endpoints[3], endpoints, 3, state)
    try:
        for node in nodes:
            node.start()
        with ClusterClient(voters, timeout=60) as client:
            client.wait_for_leader(60)
            book = client.state(OrderBook, timeout=120)
            started = time.monotonic()
            load_orders(book, orders)
            load_seconds = time.monotonic() - started
            assert book.size() == orders
            status = client.status()
            leader = next(n for n in nodes if n.endpoint == status.leader)
            commit = ClusterClient([leader.endpoint]).status().commit_index
            for node in nodes:
                wait_until(f"node{node.k} to apply", lambda n=node: n.applied() >= commit, 300)
        snapshot_file = state / "backup.catga"
        snapshot_seconds = catga(
            "snapshot", "save", str(snapshot_file), "--cluster", leader.endpoint
        )
        snapshot_mib = snapshot_file.stat().st_size / 2**20
        state_file_mib = sum(f.stat().st_size for f in leader.state.iterdir()) / 2**20
        rss = tuple(rss_mib(n.pid) for n in nodes)
        follower = next(n for n in nodes if n is not leader)
        follower.kill()
        started = time.monotonic()
        follower.start()
        wait_until("the restarted follower", lambda: follower.applied() >= commit, 600)
        restart_seconds = time.monotonic() - started
        newcomer.start(join=True)
        wait_until("the new node to answer", lambda: newcomer.applied() >= 0, 60)
        started = time.monotonic()
        add_seconds = catga(
            "members", "add", newcomer.endpoint, "--cluster", leader.endpoint, "--timeout", "600"
        )
        wait_until("the new member", lambda: newcomer.applied() >= commit, 600)
        catch_up_seconds = time.monotonic() - started
        return StateFigures(
            orders,
            load_seconds,
            snapshot_seconds,
            snapshot_mib,
            state_file_mib,
            rss,
            restart_seconds,
            add_seconds,
            catch_up_seconds,
        )
    finally:
        for node in [*nodes, newcomer]:
            node.stop()


def rows(figures: list[StateFigures]) -> list[tuple[str, list[str]]]:
    def col(fmt: str, values: list[float]) -> list[str]:
        return [fmt.format(v) for v in values]

    return [
        ("orders", [f"{f.orders:,}" for f in figures]),
        ("load (s)", col("{:.1f}", [f.load_seconds for f in figures])),
        ("snapshot save (s)", col("{:.2f}", [f.snapshot_seconds for f in figures])),
        ("snapshot size (MiB)", col("{:.2f}", [f.snapshot_mib for f in figures])),
        ("leader's state file (MiB)", col("{:.1f}", [f.state_file_mib for f in figures])),
        ("RSS per node, max (MiB)", col("{:.1f}", [max(f.rss_mib) for f in figures])),
        ("restart of a follower (s)", col("{:.2f}", [f.restart_seconds for f in figures])),
        ("catga members add (s)", col("{:.2f}", [f.add_seconds for f in figures])),
        ("new member caught up (s)", col("{:.2f}", [f.catch_up_seconds for f in figures])),
    ]


def write_plot(path: str, figures: list[StateFigures], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [f.orders for f in figures]
    fig, (seconds, mib) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, values in (
        ("snapshot save", [f.snapshot_seconds for f in figures]),
        ("restart of a follower", [f.restart_seconds for f in figures]),
        ("new member caught up", [f.catch_up_seconds for f in figures]),
    ):
        seconds.plot(sizes, values, marker="o", label=label)
    seconds.set(xscale="log", yscale="log", xlabel="orders", ylabel="seconds", title="time")
    seconds.legend()
    for label, values in (
        ("snapshot", [f.snapshot_mib for f in figures]),
        ("RSS per node", [max(f.rss_mib) for f in figures]),
        ("leader's SQLite file", [f.state_file_mib for f in figures]),
    ):
        mib.plot(sizes, values, marker="o", label=label)
    mib.set(xscale="log", yscale="log", xlabel="orders", ylabel="MiB", title="size")
    mib.legend()
    save(fig, title, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", default="1000,10000,100000,1000000", help="state sizes")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of the figures (matplotlib)")
    args = parser.parse_args()
    if args.plot and not matplotlib_available():
        parser.error(MATPLOTLIB_MISSING)
    exit_on_sigterm()
    sizes = [int(s) for s in args.orders.split(",") if s]
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(f"3 bench_node processes per size (+1 added), SQLite FULL, {BATCH:,} orders a command")
    figures: list[StateFigures] = []
    with tempfile.TemporaryDirectory(prefix="catga-scale-state-") as tmp:
        for orders in sizes:
            state = Path(tmp) / str(orders)
            try:
                figures.append(measure_size(orders, state))
            except Exception as exc:
                print(f"  {orders:,} orders FAILED: {exc}", flush=True)
                for log in sorted(state.glob("node*.log")):
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    print(f"  --- {log.name}:\n    " + "\n    ".join(tail))
                continue
            print(f"  {orders:,} orders measured ({load_line('now')})", flush=True)
    print()
    table = rows(figures)
    width = max(len(label) for label, _ in table)
    for label, values in table:
        print(f"{label:<{width}}  " + "  ".join(f"{v:>10}" for v in values))
    print("\nas multiples of the first size's:")
    for label, pick in (
        ("orders", lambda f: float(f.orders)),
        ("snapshot save", lambda f: f.snapshot_seconds),
        ("snapshot size", lambda f: f.snapshot_mib),
        ("RSS per node", lambda f: max(f.rss_mib)),
        ("restart", lambda f: f.restart_seconds),
        ("catch-up", lambda f: f.catch_up_seconds),
    ):
        print(f"  {label:<14} {growth([pick(f) for f in figures])}")
    print(load_line("after"))
    if args.plot:
        write_plot(args.plot, figures, f"catga_sync, state size, {short_machine()}")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
