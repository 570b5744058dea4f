"""Soak: three durable processes of the example app for ``--minutes`` under a mixed HTTP
workload and a nemesis, then safety checks.

- Workload (``--clients`` threads, each request to a random node): orders (create, update with
  ``expected_version``, read, ship), locks (acquire, release) and the report job's
  ``GET /report``; beside them one monitor reads the OutboxProcessor's ``GET /outbox`` every
  3 s, from a random node.
- Nemesis, every 45-60 s, in turn (shuffled each round): SIGKILL of a random node then a
  restart, SIGSTOP of a random node for a few seconds then SIGCONT, SIGKILL of the leader then
  a restart.
- Every minute one row: operations, outcomes other than 2xx by type (HTTP status and error
  code, or the client-side exception), latency p50/p99/max of the requests that got an HTTP
  answer, and per node RSS, open fds, threads, Raft log entries and snapshot index (read from
  the node's SQLite file) and the size of that file and its WAL.
- At the end: every acknowledged create exists with its customer and a version at least its
  highest acknowledged update; no read saw an older version than one acknowledged before it
  started; per lock, a grant acknowledged before another was requested has the smaller
  fencing token; the outbox's fence never decreases, an order's processed token never changes,
  and an order first seen processed carries a token at least the fence read before. Exit 1 on a
  violation.
- Then the longest-running node is restarted and, once caught up, its RSS is set beside the
  others': what the state costs against what uptime added.

    python benchmarks/soak.py --minutes 30 [--json rows.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import ExampleCluster, NodeProcess, cluster_status, leader_among, poll

LOCK_NAMES = ("soak-a", "soak-b", "soak-c")
STATUSES = ("paid", "paid", "packed", "cancelled")
# Weights of the operations in the mix; a lock operation is an acquire and, if granted, its
# release (two requests).
MIX = {
    "create": 30,
    "update": 20,
    "get": 20,
    "ship": 10,
    "lock": 14,
    "report": 6,
}
OUTBOX_EVERY = 3.0
"""Seconds between the monitor's ``GET /outbox`` reads (one at a time: their order is real)."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None
    """None when no HTTP answer came (refused, reset, timed out)."""
    body: Any
    outcome: str
    """"ok", or what went wrong: ``"503 not_leader"``, ``"ConnectionRefusedError"``..."""
    sent: float
    received: float


def call(
    node: NodeProcess, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> Answer:
    """One request on a fresh connection (a restarted node gets new connections)."""
    sent = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
    try:
        headers: dict[str, str] = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        received = time.monotonic()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if 200 <= response.status < 300:
            outcome = "ok"
        else:
            code = parsed.get("error") if isinstance(parsed, dict) else None
            outcome = f"{response.status} {code or '-'}"
        return Answer(response.status, parsed, outcome, sent, received)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, None, type(exc).__name__, sent, time.monotonic())
    finally:
        conn.close()


@dataclass(slots=True)
class Minute:
    """What the clients did since the last row (reset each minute)."""

    ops: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class LockGrant:
    name: str
    token: int
    sent: float
    received: float


class History:
    """What the clients were told, for the safety checks at the end. One lock for all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.minute = Minute()
        self.total_ops = 0
        self.total_outcomes: Counter[str] = Counter()
        self.acked: dict[str, dict[str, Any]] = {}
        """order id -> {"customer", "version"}: the highest version acknowledged to a client."""
        self.grants: list[LockGrant] = []
        self.outbox_tokens: dict[str, int] = {}
        """order id -> the fencing token /outbox first showed for it."""
        self.outbox_fence = 0
        """The fence of the last /outbox read."""
        self.outbox_reads = 0
        self.violations: list[str] = []

    def record(self, kind: str, answer: Answer) -> None:
        with self.lock:
            self.minute.ops += 1
            self.total_ops += 1
            self.minute.by_kind[kind] += 1
            if answer.outcome != "ok":
                self.minute.outcomes[f"{kind}: {answer.outcome}"] += 1
                self.total_outcomes[f"{kind}: {answer.outcome}"] += 1
            if answer.status is not None:
                self.minute.latencies.append(answer.received - answer.sent)

    def take_minute(self) -> Minute:
        with self.lock:
            minute, self.minute = self.minute, Minute()
            return minute

    def ack_order(self, order: dict[str, Any], customer: str | None = None) -> None:
        with self.lock:
            known = self.acked.get(order["id"])
            if known is None:
                self.acked[order["id"]] = {
                    "customer": customer or order["customer"],
                    "version": order["version"],
                }
            else:
                known["version"] = max(known["version"], order["version"])

    def acked_version(self, order_id: str) -> int:
        with self.lock:
            known = self.acked.get(order_id)
            return known["version"] if known else 0

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)
        print(f"VIOLATION: {text}", flush=True)

    def saw_outbox(self, body: dict[str, Any]) -> None:
        """Check one ``GET /outbox``, read after the previous one returned: the fence never
        goes down, an order's token never changes, and an order first seen processed in this
        read has a token at least the previous read's fence (it was processed after it).

        The list's order is not the processing order: a node restored from a snapshot holds
        its dicts in key order (the snapshot is JSON with sorted keys)."""
        problems = []
        with self.lock:
            self.outbox_reads += 1
            previous = self.outbox_fence
            if body["fence"] < previous:
                problems.append(f"outbox: fence {body['fence']} read after fence {previous}")
            for entry in body["processed"]:
                order_id, token = entry["order_id"], entry["fencing_token"]
                first = self.outbox_tokens.get(order_id)
                if first is None:
                    self.outbox_tokens[order_id] = token
                    if token < previous:
                        problems.append(
                            f"outbox: order {order_id} processed with token {token} after the "
                            f"fence was {previous}"
                        )
                elif first != token:
                    problems.append(f"outbox: order {order_id} token {first} became {token}")
                if token > body["fence"]:
                    problems.append(
                        f"outbox: order {order_id} token {token} > fence {body['fence']}"
                    )
            self.outbox_fence = max(previous, body["fence"])
        for problem in problems[:10]:
            self.violation(problem)


class Client(threading.Thread):
    """A closed-loop client: one operation at a time, each to a random node."""

    def __init__(
        self,
        k: int,
        nodes: list[NodeProcess],
        history: History,
        stop: threading.Event,
        think: float,
    ) -> None:
        super().__init__(name=f"client-{k}", daemon=True)
        self.k = k
        self.nodes = nodes
        self.history = history
        self.stop_event = stop
        self.think = think
        self.rng = random.Random(k)
        self.seq = 0
        self.mine: deque[str] = deque(maxlen=200)
        """Recent orders of this client, the targets of its updates, reads and ships."""
        self.versions: dict[str, int] = {}

    def node(self) -> NodeProcess:
        return self.rng.choice(self.nodes)

    def run(self) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        while not self.stop_event.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            if kind in ("update", "get", "ship") and not self.mine:
                kind = "create"
            getattr(self, f"do_{kind}")()
            if self.think:
                time.sleep(self.think)

    def do_create(self) -> None:
        self.seq += 1
        customer = f"c{self.k}-{self.seq}"
        body = {"customer": customer, "amount": self.rng.randint(1, 500)}
        answer = call(self.node(), "POST", "/orders", body)
        self.history.record("create", answer)
        if answer.status == 201:
            order = answer.body
            self.history.ack_order(order, customer)
            self.mine.append(order["id"])
            self.versions[order["id"]] = order["version"]

    def do_update(self) -> None:
        order_id = self.rng.choice(self.mine)
        body = {"status": self.rng.choice(STATUSES), "expected_version": self.versions[order_id]}
        answer = call(self.node(), "PATCH", f"/orders/{order_id}", body)
        self.history.record("update", answer)
        if answer.status == 200:
            self.history.ack_order(answer.body)
            self.versions[order_id] = answer.body["version"]
        elif answer.outcome == "409 version_conflict":
            # An earlier update whose answer was lost (a kill, a timeout) was applied after all.
            self.versions[order_id] = answer.body["current_version"]

    def do_get(self) -> None:
        order_id = self.rng.choice(self.mine)
        floor = self.history.acked_version(order_id)  # acknowledged before this read started
        answer = call(self.node(), "GET", f"/orders/{order_id}")
        self.history.record("get", answer)
        if answer.status == 200:
            version = answer.body["version"]
            self.versions[order_id] = max(self.versions[order_id], version)
            if version < floor:
                self.history.violation(
                    f"stale read: order {order_id} at version {version} after {floor} was "
                    "acknowledged"
                )
        elif answer.status == 404:
            self.history.violation(f"acknowledged order {order_id} read as 404")

    def do_ship(self) -> None:
        order_id = self.rng.choice(self.mine)
        answer = call(self.node(), "POST", f"/orders/{order_id}/ship")
        self.history.record("ship", answer)
        if answer.status == 200:
            self.history.ack_order(answer.body)
            self.versions[order_id] = max(self.versions[order_id], answer.body["version"])

    def do_lock(self) -> None:
        name = self.rng.choice(LOCK_NAMES)
        body = {"ttl": 5, "wait": 1, "owner": f"client-{self.k}"}
        answer = call(self.node(), "POST", f"/locks/{name}", body)
        self.history.record("lock", answer)
        if answer.status != 200:
            return
        token = answer.body["token"]
        with self.history.lock:
            self.history.grants.append(LockGrant(name, token, answer.sent, answer.received))
        released = call(self.node(), "DELETE", f"/locks/{name}", {"token": token})
        self.history.record("unlock", released)

    def do_report(self) -> None:
        self.history.record("report", call(self.node(), "GET", "/report"))


class OutboxMonitor(threading.Thread):
    """``GET /outbox`` from a random node every few seconds, one read at a time."""

    def __init__(self, nodes: list[NodeProcess], history: History, stop: threading.Event) -> None:
        super().__init__(name="outbox-monitor", daemon=True)
        self.nodes = nodes
        self.history = history
        self.stop_event = stop
        self.rng = random.Random(7)

    def run(self) -> None:
        while not self.stop_event.wait(OUTBOX_EVERY):
            answer = call(self.rng.choice(self.nodes), "GET", "/outbox", timeout=30)
            self.history.record("outbox", answer)
            if answer.status == 200:
                self.history.saw_outbox(answer.body)


class Nemesis(threading.Thread):
    """One fault every ``low``-``high`` seconds, the three kinds in turn (shuffled)."""

    def __init__(
        self,
        cluster: ExampleCluster,
        started: dict[str, float],
        stop: threading.Event,
        low: float,
        high: float,
    ) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.cluster = cluster
        self.started = started
        self.stop_event = stop
        self.low, self.high = low, high
        self.rng = random.Random(99)
        self.events: list[str] = []
        self.lock = threading.Lock()
        self.paused: NodeProcess | None = None

    def take_events(self) -> list[str]:
        with self.lock:
            events, self.events = self.events, []
            return events

    def note(self, text: str) -> None:
        with self.lock:
            self.events.append(text)
        print(f"  nemesis {time.strftime('%H:%M:%S')}: {text}", flush=True)

    def run(self) -> None:
        kinds: list[str] = []
        while not self.stop_event.wait(self.rng.uniform(self.low, self.high)):
            if not kinds:
                kinds = ["kill", "pause", "kill-leader"]
                self.rng.shuffle(kinds)
            kind = kinds.pop()
            try:
                getattr(self, kind.replace("-", "_"))()
            except AssertionError as exc:  # a poll that timed out: say so, carry on
                self.note(f"{kind}: {exc}")

    def restart(self, node: NodeProcess, what: str) -> None:
        assert node.process is not None
        node.signal(signal.SIGKILL)
        node.process.wait(10)
        down = self.rng.uniform(1, 3)
        time.sleep(down)
        node.start()
        self.started[node.name] = time.monotonic()
        poll(lambda: cluster_status(node), 60, f"{node.name} answering after its restart")
        self.note(f"{what} {node.name} (down {down:.1f} s), restarted")

    def kill(self) -> None:
        self.restart(self.rng.choice(self.cluster.nodes), "kill -9")

    def kill_leader(self) -> None:
        leader = poll(lambda: leader_among(self.cluster.nodes), 30, "a leader to kill")
        self.restart(leader, "kill -9 of the leader")

    def pause(self) -> None:
        node = self.rng.choice(self.cluster.nodes)
        role = (cluster_status(node) or {}).get("role", "?")
        seconds = self.rng.uniform(2, 6)
        self.paused = node
        node.signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            node.signal(signal.SIGCONT)
            self.paused = None
        self.note(f"SIGSTOP {node.name} ({role}) for {seconds:.1f} s, SIGCONT")


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def sample_node(node: NodeProcess, started: float) -> dict[str, Any]:
    """RSS, fds and threads from /proc; log entries and snapshot index from the SQLite file
    (``GET /cluster`` does not tell them), read-only beside the node's own connection."""
    row: dict[str, Any] = {"alive": node.alive()}
    if node.alive():
        assert node.process is not None
        pid = node.process.pid
        with contextlib.suppress(OSError):
            status = proc_status(pid)
            row.update(
                pid=pid,
                up_s=round(time.monotonic() - started),
                rss_mib=round(int(status["VmRSS"].split()[0]) / 1024, 1),
                threads=int(status["Threads"]),
                fds=len(os.listdir(f"/proc/{pid}/fd")),
            )
    path = node.state_dir / f"{node.name}.sqlite3"
    row["db_bytes"] = path.stat().st_size if path.exists() else 0
    wal = Path(f"{path}-wal")
    row["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    text_log = node.state_dir / f"{node.name}.log"  # the node's stdout and stderr
    row["text_log_bytes"] = text_log.stat().st_size if text_log.exists() else 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            row["log_entries"] = db.execute("SELECT count(*) FROM catga_log").fetchone()[0]
            snap = db.execute("SELECT max(idx) FROM catga_snapshot").fetchone()[0]
            row["snapshot_index"] = snap or 0
            last = db.execute("SELECT max(idx) FROM catga_log").fetchone()[0]
            row["last_index"] = last or row["snapshot_index"]
    except sqlite3.Error as exc:
        row["sqlite_error"] = str(exc)
    return row


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}M"


def print_row(row: dict[str, Any]) -> None:
    lat = row["latency_ms"]
    print(
        f"[min {row['minute']:>3}] ops {row['ops']:>5} (total {row['ops_total']:>6}, "
        f"{row['ops'] / max(row['seconds'], 1):.1f}/s)  latency p50 {lat['p50']:.0f} ms "
        f"p99 {lat['p99']:.0f} ms max {lat['max']:.0f} ms  acked orders {row['acked_orders']}",
        flush=True,
    )
    for name, n in row["nodes"].items():
        if "rss_mib" in n:
            proc = f"rss {n['rss_mib']:6.1f} MiB  fds {n['fds']:>3}  thr {n['threads']:>3}  "
            proc += f"up {n['up_s']:>5} s"
        else:
            proc = "down" + " " * 42
        print(
            f"    {name}: {proc}  log {n.get('log_entries', '?'):>5} entries "
            f"(snapshot {n.get('snapshot_index', '?')}, last {n.get('last_index', '?')})  "
            f"db {mib(n['db_bytes'])} wal {mib(n['wal_bytes'])} "
            f"stdout {n['text_log_bytes'] >> 10}K",
            flush=True,
        )
    if row["outcomes"]:
        errors = ", ".join(f"{k} ×{v}" for k, v in sorted(row["outcomes"].items()))
        print(f"    not ok: {errors}", flush=True)
    for event in row["nemesis"]:
        print(f"    nemesis: {event}", flush=True)


def check_locks(grants: list[LockGrant]) -> list[str]:
    """Per lock: a grant acknowledged before another was requested (so it came first in any
    order) has the smaller token. Grants whose requests overlapped are not ordered by this."""
    problems = []
    for name in LOCK_NAMES:
        mine = [g for g in grants if g.name == name]
        by_received = sorted(mine, key=lambda g: g.received)
        tokens = Counter(g.token for g in mine)
        problems += [
            f"lock {name}: token {t} granted {n} times" for t, n in tokens.items() if n > 1
        ]
        highest, k = 0, 0
        for grant in sorted(mine, key=lambda g: g.sent):
            while k < len(by_received) and by_received[k].received < grant.sent:
                highest = max(highest, by_received[k].token)
                k += 1
            if grant.token <= highest:
                problems.append(
                    f"lock {name}: token {grant.token} granted after token {highest} had been"
                )
    return problems


def fresh_restart(cluster: ExampleCluster, started: dict[str, float]) -> dict[str, Any]:
    """Restart the longest-running node and let it catch up: its RSS then is what the state
    costs now, so the others' RSS beyond it is what their uptime added (a leak, or caches)."""
    oldest = min(cluster.nodes, key=lambda n: started[n.name])
    uptime = round(time.monotonic() - started[oldest.name])
    before = sample_node(oldest, started[oldest.name])
    leader = cluster.wait_for_leader(timeout=60)
    target = leader.status()["commit_index"]
    oldest.kill()
    oldest.start()
    started[oldest.name] = time.monotonic()
    poll(
        lambda: (cluster_status(oldest) or {}).get("last_applied", -1) >= target,
        120,
        f"{oldest.name} caught up after its restart",
    )
    time.sleep(10)  # idle, like the others now
    after = {n.name: sample_node(n, started[n.name]) for n in cluster.nodes}
    row = {"node": oldest.name, "uptime_s": uptime, "before": before, "after": after}
    print(
        f"fresh restart of {oldest.name} (up {uptime} s): RSS {before.get('rss_mib')} MiB, "
        f"fds {before.get('fds')}, threads {before.get('threads')} before; after catching up "
        + ", ".join(
            f"{name} {n.get('rss_mib')} MiB / {n.get('fds')} fds / {n.get('threads')} threads "
            f"(up {n.get('up_s')} s)"
            for name, n in after.items()
        ),
        flush=True,
    )
    return row


def final_checks(cluster: ExampleCluster, history: History) -> list[str]:
    """Bring every node back, then read the orders and the outbox from the leader."""
    for node in cluster.nodes:
        if not node.alive():
            node.start()
        else:
            node.signal(signal.SIGCONT)
    leader = cluster.wait_for_leader(timeout=60)

    def read(path: str) -> Any:
        answer = call(leader, "GET", path, timeout=60)
        return answer.body if answer.status == 200 else None

    orders = poll(lambda: read("/orders"), 60, "GET /orders")["orders"]
    outbox = poll(lambda: read("/outbox"), 60, "GET /outbox")
    problems: list[str] = []
    stored = {o["id"]: o for o in orders}
    for order_id, acked in history.acked.items():
        order = stored.get(order_id)
        if order is None:
            problems.append(f"acknowledged order {order_id} is missing")
        elif order["customer"] != acked["customer"]:
            problems.append(f"order {order_id}: customer {order['customer']!r} != {acked}")
        elif order["version"] < acked["version"]:
            problems.append(
                f"order {order_id}: version {order['version']} < acknowledged {acked['version']}"
            )
    problems += check_locks(history.grants)
    history.saw_outbox(outbox)  # after every other read: the same checks, on the last state
    problems = list(history.violations) + problems
    tokens = [e["fencing_token"] for e in outbox["processed"]]
    print(
        f"final: {len(orders)} orders stored, {len(history.acked)} acknowledged creates; "
        f"{len(history.grants)} lock grants; outbox {len(outbox['processed'])} processed "
        f"(fence {outbox['fence']}, tokens {min(tokens, default=0)}..{max(tokens, default=0)}), "
        f"{len(outbox['pending'])} pending; {history.outbox_reads} outbox reads",
        flush=True,
    )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--think", type=float, default=0.05, help="seconds between a client's ops")
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=2000,
        help="the nodes' snapshot_every (default 2000: a snapshot every minute or so)",
    )
    parser.add_argument("--nemesis-every", default="45-60", help="seconds between faults, LOW-HIGH")
    parser.add_argument(
        "--no-nemesis",
        action="store_true",
        help="no faults: processes live the whole run (to tell a leak from the state's growth)",
    )
    parser.add_argument("--row-seconds", type=float, default=60.0, help="seconds per row")
    parser.add_argument("--json", type=Path, help="write the per-minute rows to this file")
    parser.add_argument("--state-dir", type=Path, help="keep the nodes' state and logs here")
    args = parser.parse_args()
    low, high = (float(x) for x in args.nemesis_every.split("-"))
    print(
        f"soak: {args.minutes:g} min, {args.clients} clients, "
        f"{'no nemesis' if args.no_nemesis else f'nemesis every {low:g}-{high:g} s'}, "
        f"snapshot_every {args.snapshot_every}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        if args.state_dir is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        else:
            state = args.state_dir
            state.mkdir(parents=True, exist_ok=True)
        cluster = ExampleCluster(state, extra_args=["--snapshot-every", str(args.snapshot_every)])
        stack.callback(cluster.stop)
        cluster.start()
        started = {n.name: time.monotonic() for n in cluster.nodes}
        poll(lambda: len(cluster.statuses()) == 3, 60, "all 3 nodes serving")
        cluster.wait_for_leader(timeout=30)
        history = History()
        stop = threading.Event()
        clients = [Client(k, cluster.nodes, history, stop, args.think) for k in range(args.clients)]
        nemesis = Nemesis(cluster, started, stop, low, high)
        monitor = OutboxMonitor(cluster.nodes, history, stop)
        for thread in [*clients, monitor] + ([] if args.no_nemesis else [nemesis]):
            thread.start()

        def stop_all() -> None:
            stop.set()
            if nemesis.is_alive():
                nemesis.join(30)
            if nemesis.paused is not None:
                nemesis.paused.signal(signal.SIGCONT)
            for thread in [*clients, monitor]:
                thread.join(40)

        stack.callback(stop_all)  # also on Ctrl-C: never leave a node stopped
        rows = []
        begin = time.monotonic()
        end = begin + args.minutes * 60
        last = begin
        while (now := time.monotonic()) < end:
            time.sleep(min(args.row_seconds - (now - last), end - now))
            now = time.monotonic()
            minute = history.take_minute()
            lat = [x * 1000 for x in minute.latencies] or [0.0]
            row = {
                "minute": len(rows) + 1,
                "seconds": round(now - last, 1),
                "ops": minute.ops,
                "ops_total": history.total_ops,
                "by_kind": dict(minute.by_kind),
                "outcomes": dict(minute.outcomes),
                "latency_ms": {
                    "p50": round(percentile(lat, 50), 1),
                    "p99": round(percentile(lat, 99), 1),
                    "max": round(max(lat), 1),
                },
                "acked_orders": len(history.acked),
                "nemesis": nemesis.take_events(),
                "nodes": {n.name: sample_node(n, started[n.name]) for n in cluster.nodes},
                "load_average": round(os.getloadavg()[0], 2),
            }
            last = now
            rows.append(row)
            print_row(row)
            if args.json is not None:
                args.json.write_text(json.dumps({"rows": rows}, indent=1))
        stop_all()
        print(f"total: {history.total_ops} operations; not ok by type:", flush=True)
        for key, n in sorted(history.total_outcomes.items()):
            print(f"    {key}: {n}")
        problems = final_checks(cluster, history)
        restart = fresh_restart(cluster, started)
        if args.json is not None:
            args.json.write_text(json.dumps({"rows": rows, "fresh_restart": restart}, indent=1))
        if problems:
            print(f"safety violations: {len(problems)}")
            for problem in problems:
                print(f"    {problem}")
            print(cluster.logs())
            return 1
        print("safety violations: 0")
        return 0


if __name__ == "__main__":
    sys.exit(main())
