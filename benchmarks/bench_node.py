"""One node of a benchmark cluster, in its own process: catga_sync or PySyncObj, with a counter.

``python -m catga_sync serve`` cannot register state machines, so :mod:`throughput` starts the
two nodes it does not host itself with this script. Both kinds keep the same tiny counter, so
a command costs the same on either side. The node runs until SIGTERM; each line on standard
input is a command (``transfer <target>``: hand leadership to ``target`` if this node leads), so
the benchmark can make its own node the leader or a follower.

    python benchmarks/bench_node.py catga --endpoint http://127.0.0.1:7001 \\
        --members http://127.0.0.1:7000,http://127.0.0.1:7001,... --node-id node1 --state DIR
    python benchmarks/bench_node.py pysyncobj --endpoint 127.0.0.1:7101 --members ...
    python benchmarks/bench_node.py pysyncobj-locks ...   (with PySyncObj's ReplLockManager)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catga_sync.config import ClusterConfig
from catga_sync.fsm import StateMachine, command, query
from catga_sync.node import ClusterNode

LOCK_TTL = 30.0  # seconds, the locks benchmarks' TTL on every side


class Counter(StateMachine):
    """The benchmark's state machine: one integer."""

    name = "bench.counter"

    def __init__(self) -> None:
        self.value = 0

    @command
    def increment(self, by: int = 1) -> int:
        self.value += by
        return self.value

    @query
    def get(self) -> int:
        return self.value


class OrderBook(StateMachine):
    """The state-size benchmark's machine: orders, loaded many per command so that a million
    of them take minutes, not hours (the state grows; the log stays short)."""

    name = "bench.orders"

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}

    @command
    def load(self, start: int, count: int) -> int:
        for n in range(start, start + count):
            self.orders[f"order-{n:08d}"] = {
                "customer": f"customer-{n % 1000:04d}",
                "amount": n % 997,
                "status": "new",
            }
        return len(self.orders)

    @query
    def size(self) -> int:
        return len(self.orders)


ORDERS_SNAPSHOT_EVERY = 20
"""Entries between snapshots on the orders nodes: a snapshot every 20 loads, so that a new
member catches up from a snapshot of the whole state, not by replaying the log."""

BACKGROUND_SNAPSHOT_ENV = "CATGA_BENCH_BACKGROUND_SNAPSHOT_AFTER"
"""``Cluster:BackgroundSnapshotAfter`` of the orders nodes (seconds, or ``none``); unset: the
default's."""

PIPELINE_DEPTH_ENV = "CATGA_BENCH_PIPELINE_DEPTH"
"""The benchmarks' ``--pipeline-depth``, handed to the node processes they start."""
PEER_FRAMES_ENV = "CATGA_BENCH_PEER_FRAMES"
"""The benchmarks' ``--no-peer-frames`` (``0``), handed to the node processes they start."""


def add_transport_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pipeline-depth",
        type=int,
        default=1,
        metavar="N",
        help="catga_sync's Cluster:PipelineDepth on every node (default: 1, the default's)",
    )
    parser.add_argument(
        "--no-peer-frames",
        action="store_true",
        help="Cluster:PeerFrames false on every node: one HTTP request per peer exchange",
    )


def use_transport_options(args: argparse.Namespace) -> None:
    """Give every node of this run, in this process and in those it starts, the options."""
    os.environ[PIPELINE_DEPTH_ENV] = str(args.pipeline_depth)
    os.environ[PEER_FRAMES_ENV] = "0" if args.no_peer_frames else "1"


def catga_node(
    endpoint: str,
    members: Sequence[str],
    node_id: str,
    state_dir: str,
    *,
    serve_http: bool = True,
    orders: bool = False,
    join: bool = False,
) -> ClusterNode:
    """A durable node (SQLite, synchronous FULL) at the guide's timeouts, with a Counter
    (``orders``: an :class:`OrderBook` too, snapshot every :data:`ORDERS_SNAPSHOT_EVERY`)."""
    background = os.environ.get(BACKGROUND_SNAPSHOT_ENV)
    extra: dict[str, Any] = {}
    if background is not None:
        extra["background_snapshot_after"] = (
            None if background == "none" else timedelta(seconds=float(background))
        )
    config = ClusterConfig(
        local_node_endpoint=endpoint,
        members=tuple(members),
        node_id=node_id,
        persistent_state_path=state_dir,
        sqlite_synchronous="FULL",
        election_timeout=timedelta(milliseconds=150),
        heartbeat_interval=timedelta(milliseconds=50),
        pipeline_depth=int(os.environ.get(PIPELINE_DEPTH_ENV, "1")),
        peer_frames=os.environ.get(PEER_FRAMES_ENV, "1") == "1",
        snapshot_every=ORDERS_SNAPSHOT_EVERY if orders else 10_000,
        join=join,
        **extra,
    )
    node = ClusterNode(config, serve_http=serve_http)
    node.register(Counter())
    if orders:
        node.register(OrderBook())
    return node


def pysyncobj_counter(endpoint: str, members: Sequence[str], *, with_locks: bool = False) -> Any:
    """A PySyncObj node with a ``@replicated`` counter, ``appendEntriesUseBatch=False``; with
    ``with_locks``, also PySyncObj's own ``ReplLockManager`` (as its ``lock_manager``), which
    every member of the cluster must then have.

    Imported lazily: PySyncObj is not a dependency of catga_sync.
    """
    from pysyncobj import SyncObj, SyncObjConf, replicated
    from pysyncobj.batteries import ReplLockManager

    class PsoCounter(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            others = [m for m in members if m != endpoint]
            conf = SyncObjConf(appendEntriesUseBatch=False)
            self.value = 0  # before the node starts applying
            self.lock_manager = ReplLockManager(autoUnlockTime=LOCK_TTL) if with_locks else None
            consumers = [self.lock_manager] if self.lock_manager is not None else None
            super().__init__(endpoint, others, conf, consumers=consumers)

        @replicated  # type: ignore[misc]
        def increment(self, by: int = 1) -> int:
            self.value += by
            return self.value

        def destroy(self) -> None:
            if self.lock_manager is not None:
                self.lock_manager.destroy()
            super().destroy()

    return PsoCounter()


def serve_commands(transfer: Callable[[str], None], done: threading.Event) -> None:
    """Run ``transfer <target>`` lines from stdin until it closes."""
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "transfer":
            try:
                transfer(parts[1])
            except Exception as exc:  # not the leader, or a transfer already running
                logging.getLogger("bench_node").info("transfer refused: %s", exc)
    done.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("catga", "catga-orders", "pysyncobj", "pysyncobj-locks"))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--members", required=True, help="comma-separated, this node included")
    parser.add_argument("--node-id", default="node")
    parser.add_argument("--state", default="", help="state directory (catga)")
    parser.add_argument("--join", action="store_true", help="start as a new member (catga)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per RPC
    members = [m for m in args.members.split(",") if m]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    stop: Callable[[], None]
    if args.kind.startswith("catga"):
        node = catga_node(
            args.endpoint,
            members,
            args.node_id,
            args.state,
            orders=args.kind == "catga-orders",
            join=args.join,
        ).start()

        def transfer(target: str) -> None:
            if node.status.is_leader:
                node.transfer_leadership(target)

        stop = node.stop
    else:
        counter = pysyncobj_counter(
            args.endpoint, members, with_locks=args.kind == "pysyncobj-locks"
        )

        def transfer(target: str) -> None:
            counter.transferLeadership(target)

        stop = counter.destroy
    threading.Thread(target=serve_commands, args=(transfer, done), daemon=True).start()
    print("ready", flush=True)
    done.wait()
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
