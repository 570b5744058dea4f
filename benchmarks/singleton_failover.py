"""Singleton task failover: from the leader's death to the task running on the new leader.

Three real worker processes (``ClusterNode`` without Flask, serving its peer RPC and
``/cluster`` from the embedded server, durable SQLite state) at the guide's defaults
(150/50 ms). Each registers one singleton task; every run reports its start and its stop to
this process in a UDP datagram stamped with the worker's wall clock (same host, same clock), and
each node reports the moment it becomes leader. Modes:

- ``kill``: SIGKILL of the leader; time from the kill to the new leader's election and to its
  task running;
- ``term``: SIGTERM (graceful stop: the leader hands leadership over first);
- ``pause``: SIGSTOP of the leader, the same two times; then SIGCONT, and the time from the
  resume to the old leader's run being told to stop (how long a paused leader stays stale).

It also checks, over every run of the benchmark, that no term had its task started on two nodes.

    python benchmarks/singleton_failover.py [--mode kill|term|pause] [--kills 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.harness import free_ports, get_json, poll  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# ---------------------------------------------------------------------------------------------
# The worker process


def worker(args: argparse.Namespace) -> int:
    from catga_sync.config import ClusterConfig
    from catga_sync.node import ClusterNode, NodeStatus
    from catga_sync.singleton import SingletonTasks, TaskContext

    config = ClusterConfig(
        local_node_endpoint=args.endpoint,
        members=tuple(args.members.split(",")),
        node_id=args.node_id,
        persistent_state_path=args.state,
        election_timeout=args.election_timeout,
        heartbeat_interval=args.heartbeat_interval,
    )
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def report(event: str, term: int) -> None:
        body = {"event": event, "node": args.node_id, "term": term, "t": time.time()}
        out.sendto(json.dumps(body).encode(), ("127.0.0.1", args.report))

    def task(ctx: TaskContext) -> None:
        report("start", ctx.fencing_token)
        ctx.stop_event.wait()
        report("stop", ctx.fencing_token)

    def elected(old: NodeStatus, new: NodeStatus) -> None:
        if new.is_leader and not old.is_leader:
            report("leader", new.term)

    node = ClusterNode(config)
    node.add_status_listener(elected)
    SingletonTasks.of(node).add(task, name="bench")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    node.start()
    done.wait()
    node.stop()
    return 0


# ---------------------------------------------------------------------------------------------
# The benchmark


class Events:
    """Datagrams from the workers, collected by a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.items: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            data, _ = self.sock.recvfrom(4096)
            with self.cond:
                self.items.append(json.loads(data))
                self.cond.notify_all()

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        with self.cond:
            found: list[dict[str, Any]] = []

            def seen() -> bool:
                found[:] = [e for e in self.items if match(e)]
                return bool(found)

            if not self.cond.wait_for(seen, timeout):
                raise AssertionError("timed out waiting for a worker's report")
            return found[0]


class Worker:
    def __init__(self, name: str, port: int, members: str, state: Path, extra: list[str]) -> None:
        self.name, self.port, self.members, self.state, self.extra = (
            name,
            port,
            members,
            state,
            extra,
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.state / f"{self.name}.log", "ab")  # noqa: SIM115
        command = [sys.executable, __file__, "worker", "--endpoint", self.endpoint]
        command += ["--members", self.members, "--node-id", self.name, "--state", str(self.state)]
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
        env["PYTHONPATH"] = str(ROOT)
        self.process = subprocess.Popen(
            command + self.extra, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any]:
        code, body = get_json(f"{self.endpoint}/cluster", timeout=0.5)
        assert code == 200, body
        return dict(body)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


def agreed_leader(workers: list[Worker]) -> tuple[Worker, int] | None:
    statuses = {}
    for w in workers:
        if not w.alive():
            return None
        try:
            statuses[w.name] = w.status()
        except OSError:
            return None
    leaders = [w for w in workers if statuses[w.name]["role"] == "leader"]
    if len(leaders) != 1:
        return None
    term = statuses[leaders[0].name]["term"]
    if all(s["leader_endpoint"] == leaders[0].endpoint for s in statuses.values()):
        return leaders[0], term
    return None


def one_round(
    workers: list[Worker], events: Events, mode: str
) -> tuple[float, float, float | None]:
    leader, term = poll(lambda: agreed_leader(workers), 30, "one agreed leader")
    events.wait(lambda e: e["event"] == "start" and e["node"] == leader.name and e["term"] == term)
    assert leader.process is not None
    signum = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "pause": signal.SIGSTOP}[mode]
    started = time.time()
    leader.process.send_signal(signum)
    elected = events.wait(
        lambda e: e["event"] == "leader" and e["node"] != leader.name and e["term"] > term
    )
    running = events.wait(
        lambda e: e["event"] == "start" and e["node"] != leader.name and e["term"] > term
    )
    stale: float | None = None
    if mode == "pause":
        resumed = time.time()
        leader.process.send_signal(signal.SIGCONT)
        told = events.wait(
            lambda e: e["event"] == "stop" and e["node"] == leader.name and e["term"] == term
        )
        stale = told["t"] - resumed
    else:
        leader.process.wait(20)
        leader.start()
    poll(
        lambda: leader.alive() and leader.status()["leader_endpoint"] not in (None, ""),
        30,
        "rejoin",
    )
    return elected["t"] - started, running["t"] - started, stale


def one_node_per_term(events: Events) -> tuple[bool, int, int]:
    with events.cond:
        starts = [(e["node"], e["term"]) for e in events.items if e["event"] == "start"]
    by_term: dict[int, set[str]] = {}
    for node, term in starts:
        by_term.setdefault(term, set()).add(node)
    ok = all(len(nodes) == 1 for nodes in by_term.values()) and len(set(starts)) == len(starts)
    return ok, len(starts), len(by_term)


def line(label: str, values: list[float]) -> str:
    return (
        f"{label:<50} n={len(values)}  p50 {statistics.median(values) * 1000:6.0f} ms  "
        f"p99 {percentile(values, 99) * 1000:6.0f} ms  max {max(values) * 1000:6.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("worker", help="(internal) one node of the cluster")
    run.add_argument("--endpoint", required=True)
    run.add_argument("--members", required=True)
    run.add_argument("--node-id", required=True)
    run.add_argument("--state", required=True)
    run.add_argument("--report", type=int, required=True)
    for p in (parser, run):
        p.add_argument("--election-timeout", type=float, default=0.15, help="seconds")
        p.add_argument("--heartbeat-interval", type=float, default=0.05, help="seconds")
    parser.add_argument("--mode", choices=("kill", "term", "pause"), default="kill")
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker(args)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; election {args.election_timeout * 1000:.0f} ms, "
        f"heartbeat {args.heartbeat_interval * 1000:.0f} ms; SQLite FULL; mode {args.mode}"
    )
    events = Events()
    extra = ["--report", str(events.port)]
    extra += ["--election-timeout", str(args.election_timeout)]
    extra += ["--heartbeat-interval", str(args.heartbeat_interval)]
    with tempfile.TemporaryDirectory() as tmp:
        ports = free_ports(3)
        members = ",".join(f"http://127.0.0.1:{p}" for p in ports)
        workers = [Worker(f"node{k}", p, members, Path(tmp), extra) for k, p in enumerate(ports)]
        for w in workers:
            w.start()
        try:
            results = [one_round(workers, events, args.mode) for _ in range(args.kills)]
        except BaseException:
            for w in workers:
                print(f"--- {w.name}\n{(Path(tmp) / f'{w.name}.log').read_text()[-2000:]}")
            raise
        finally:
            for w in workers:
                w.kill()
    what = {"kill": "SIGKILL", "term": "SIGTERM", "pause": "SIGSTOP"}[args.mode]
    print(line(f"{what} of leader -> new leader elected", [r[0] for r in results]))
    print(line(f"{what} of leader -> task running on new leader", [r[1] for r in results]))
    print(line("   of which election to task running", [r[1] - r[0] for r in results]))
    stale = [r[2] for r in results if r[2] is not None]
    if stale:
        print(line("SIGCONT of old leader -> its run told to stop", stale))
    ok, starts, terms = one_node_per_term(events)
    print(f"one node per term: {'yes' if ok else 'NO'} ({starts} task starts over {terms} terms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
