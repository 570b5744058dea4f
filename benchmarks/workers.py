"""The cost of a request that lands in a worker which does not host the node (gunicorn -w N).

Starts one example node (a one-member cluster, SQLite state) under gunicorn with ``--workers``
workers, then sends requests on keep-alive connections, each of which gunicorn gives to one
worker, and sorts them by who answered: the hosting worker itself, or a client worker that
relayed the node's route (``X-Catga-Relayed-By``) or ran the app's view with its node's calls
going to the host (``X-Served-By`` names a pid other than the host's). Prints p50/p99 of each,
and the difference: what the relay costs.

    python benchmarks/workers.py [--workers 3] [--requests 2000] [--runs 3]

- ``GET /_catga/client/status``: the node's own route (a peer RPC or a probe takes this path);
- ``POST /orders``: the example's write (a command through the Raft log, fsync included);
- ``GET /orders/<id>``: a linearizable read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.wait import free_ports, poll  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def start(state: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
    env.update(
        PYTHONPATH=str(ROOT),
        Cluster__LocalNodeEndpoint=f"http://127.0.0.1:{port}",
        Cluster__NodeId="node0",
        Cluster__PersistentStatePath=str(state),
        LOG_LEVEL="WARNING",
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "example_flask" / "gunicorn.conf.py"),
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "example_flask:create_app()",
    ]
    log = open(state / "gunicorn.log", "ab")  # noqa: SIM115
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def host_pid(state: Path) -> int | None:
    try:
        return int(json.loads((state / "node0.workers.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def connections(url: str, host: int, each: int) -> dict[str, list[requests.Session]]:
    """Kept-alive connections, sorted by the worker gunicorn gave them: ``each`` answered by
    the hosting worker and ``each`` by client workers (a connection stays with its worker)."""
    by: dict[str, list[requests.Session]] = {"host": [], "client": []}
    for _ in range(400):
        if min(len(v) for v in by.values()) >= each:
            break
        session = requests.Session()
        served = session.get(f"{url}/", timeout=10).headers["X-Served-By"].rsplit("/", 1)[1]
        who = "host" if int(served) == host else "client"
        if len(by[who]) < each:
            by[who].append(session)
        else:
            session.close()
    return by


def measure(url: str, host: int, requests_per_kind: int, each: int) -> dict[str, dict]:
    """Per kind of request, the latencies (ms) answered by the host and by a client worker."""
    sessions = connections(url, host, each)
    if not sessions["host"] or not sessions["client"]:
        raise SystemExit("gunicorn gave every connection to one kind of worker")
    first = sessions["host"][0]
    created = first.post(f"{url}/orders", json={"customer": "a", "amount": 1}, timeout=10)
    order = created.json()["id"]
    kinds = {
        "GET /_catga/client/status": ("GET", "/_catga/client/status", None),
        "POST /orders": ("POST", "/orders", {"customer": "a", "amount": 1}),
        "GET /orders/<id>": ("GET", f"/orders/{order}", None),
    }
    out: dict[str, dict] = {}
    for kind, (method, path, body) in kinds.items():
        by: dict[str, list[float]] = {"host": [], "client": []}
        for k in range(requests_per_kind):
            who = "host" if k % 2 else "client"  # interleaved: the same load for both
            session = sessions[who][(k // 2) % len(sessions[who])]
            t0 = time.perf_counter()
            response = session.request(method, f"{url}{path}", json=body, timeout=10)
            by[who].append((time.perf_counter() - t0) * 1e3)
            response.raise_for_status()
        out[kind] = by
    for group in sessions.values():
        for session in group:
            session.close()
    return out


def one_run(workers: int, requests_per_kind: int, each: int) -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix="catga-workers-") as tmp:
        state = Path(tmp)
        (port,) = free_ports(1)
        process = start(state, port, workers)
        url = f"http://127.0.0.1:{port}"
        try:
            poll(lambda: requests.get(f"{url}/readyz", timeout=1).ok, 60, "the node ready")
            host = poll(lambda: host_pid(state), 30, "the hosting worker")
            return measure(url, host, requests_per_kind, each)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="per kind of request, per run")
    parser.add_argument(
        "--connections", type=int, default=4, help="kept-alive connections per kind of worker"
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"command: python benchmarks/workers.py {' '.join(sys.argv[1:])}".rstrip())
    totals: dict[str, dict[str, list[float]]] = {}
    for run in range(args.runs):
        results = one_run(args.workers, args.requests, args.connections)
        for kind, by in results.items():
            for who, values in by.items():
                totals.setdefault(kind, {}).setdefault(who, []).extend(values)
        print(f"run {run + 1}/{args.runs} done")
    print(f"\n{args.workers} workers, {args.runs} runs of {args.requests} requests per kind")
    print(
        f"{'request':28} {'host p50':>9} {'client p50':>11} {'relay p50':>10} "
        f"{'host p99':>9} {'client p99':>11}  (ms; n host/client)"
    )
    for kind, by in totals.items():
        host, client = by["host"], by["client"]
        if not host or not client:
            print(f"{kind:28} (only one kind of worker answered)")
            continue
        h50, c50 = statistics.median(host), statistics.median(client)
        print(
            f"{kind:28} {h50:9.2f} {c50:11.2f} {c50 - h50:+10.2f} "
            f"{percentile(host, 99):9.2f} {percentile(client, 99):11.2f}  "
            f"({len(host)}/{len(client)})"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
