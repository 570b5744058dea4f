"""What a node's RSS is made of: each import, the running node, and what Python allocated.

Runs two fresh child processes, each a one-member cluster of the example app (SQLite, the
guide's 150/50 ms) serving HTTP on a loopback port, until it leads and has committed a few
orders:

- the first reads ``VmRSS`` after each step: the interpreter alone, then SQLAlchemy's core,
  Flask (Werkzeug, Jinja2, Click), APScheduler, catga_sync and the example app imported, then
  the app built and the node started, and once it has served 200 ``POST /orders``
  (``requests`` and ``sqlalchemy.orm`` are not imported by a node: a node loads them only
  where it needs them);
- the second runs with :mod:`tracemalloc` from before the node's imports and charges what is
  still allocated at the end to the innermost frame of its traceback in a package (the
  module whose import, class or function built it, or which imported the standard-library
  module that did): what Python itself holds, against an RSS that also counts the shared
  libraries' pages (libpython, SQLite, OpenSSL) and the allocators' free lists.

The step figures depend on the order: each step counts what it imports first, standard
library modules included (SQLAlchemy's step holds ``asyncio``, for one).

    python benchmarks/memory.py

A three-member cluster's RSS per node (``failover.py``) is a little larger: two sender threads
and their connections, and the peers' queues.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS = (
    ("sqlalchemy", "import sqlalchemy"),
    ("flask", "import flask"),
    ("apscheduler", "import apscheduler.schedulers.background"),
    ("catga_sync", "import catga_sync, catga_sync.web, catga_sync.runtime.node"),
    ("example app", "import example_flask, example_flask.__main__"),
)
ORDERS = 200
FRAMES = 16
"""Frames kept per allocation: enough to reach, from the import machinery, the module that
imported (an import nests a handful of frames per level)."""


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_node(state: str) -> None:
    """Start a one-member example node serving HTTP, wait until it leads, post orders."""
    import http.client
    import logging
    import socket
    import threading

    from catga_sync import CatgaCluster
    from catga_sync.web.worker_app import make_threaded_server
    from example_flask import create_app
    from example_flask.__main__ import build_config, parse_args

    logging.disable(logging.WARNING)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://localhost:{port}"  # what --port advertises
    args = parse_args(
        ["--port", str(port), "--node-id", "node0", "--members", endpoint, "--state-dir", state]
    )
    app = create_app(build_config(args, {}))
    node = CatgaCluster.state_of(app).node
    server = make_threaded_server(app, "127.0.0.1", port, None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    deadline = time.monotonic() + 30
    while not node.status.is_leader:
        if time.monotonic() > deadline:
            raise SystemExit("the node did not lead within 30 s")
        time.sleep(0.05)
    print(json.dumps({"step": "node started", "rss": rss_mib(), "modules": len(sys.modules)}))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"customer": "memory", "amount": 1}).encode()
    for _ in range(ORDERS):
        connection.request("POST", "/orders", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 201:
            raise SystemExit(f"POST /orders answered {response.status}")
    time.sleep(1)
    step = f"{ORDERS} orders served"
    print(json.dumps({"step": step, "rss": rss_mib(), "modules": len(sys.modules)}))


def child_steps(state: str) -> None:
    def step(name: str) -> None:
        print(json.dumps({"step": name, "rss": rss_mib(), "modules": len(sys.modules)}))

    step("interpreter")
    for name, statement in STEPS:
        exec(statement, {})
        step(name)
    run_node(state)


def child_traced(state: str) -> None:
    import tracemalloc

    tracemalloc.start(FRAMES)
    run_node(state)
    snapshot = tracemalloc.take_snapshot()
    by_package: dict[str, int] = {}
    for stat in snapshot.statistics("traceback"):
        owner = _owner(stat.traceback)
        by_package[owner] = by_package.get(owner, 0) + stat.size
    total = sum(by_package.values())
    print(json.dumps({"traced": total, "by_package": by_package, "rss": rss_mib()}), flush=True)


def _owner(traceback: Sequence[Any]) -> str:
    """Who an allocation is charged to: the innermost frame of its traceback in a package or
    the example (a module's code, the classes and functions its body builds, what the
    standard library did for it, an import it made), else the standard library."""
    for frame in reversed(traceback):  # tracemalloc lists the oldest frame first
        package = _package(frame.filename)
        if package not in ("stdlib", "<frozen or generated>"):
            return package
    return "stdlib"


def _package(filename: str) -> str:
    """``catga_sync``, ``sqlalchemy``, ..., ``stdlib`` or ``<frozen or generated>`` for a file
    name; this script is ``memory.py``."""
    parts = Path(filename).parts
    for site in ("site-packages", "dist-packages"):
        if site in parts:
            return parts[parts.index(site) + 1].split(".")[0]
    for top in ("catga_sync", "example_flask"):
        if top in parts:
            return top
    if filename.startswith("<"):
        return "<frozen or generated>"
    if Path(filename).name == "memory.py":
        return "memory.py"
    return "stdlib"


def run_child(mode: str) -> list[dict[str, object]]:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as state:
        out = subprocess.run(
            [sys.executable, __file__, mode, state],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    if out.returncode != 0:
        raise SystemExit(f"the {mode} child failed:\n{out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import command_line, machine_line

    print(machine_line())
    print(command_line())
    steps = run_child("--steps")
    previous = 0.0
    print("RSS after each step (MiB), what the step added, and the modules then loaded")
    print("(each step counts what it imports first, the standard library's modules included):")
    for step in steps:
        rss = float(step["rss"])  # type: ignore[arg-type]
        modules = step["modules"]
        print(f"  {step['step']:<22} {rss:6.1f}  +{rss - previous:5.1f}  {modules:>4} modules")
        previous = rss
    traced = run_child("--traced")[-1]
    total = int(traced["traced"])  # type: ignore[call-overload]
    print(
        f"allocated by Python and still held at the end (tracemalloc): {total / 2**20:.1f} MiB "
        f"of an RSS of {float(traced['rss']):.1f} MiB with tracemalloc on; by the package whose "  # type: ignore[arg-type]
        "code allocated it or imported what did:"
    )
    packages = sorted(traced["by_package"].items(), key=lambda kv: -kv[1])  # type: ignore[attr-defined]
    for name, size in packages[:12]:
        print(f"  {name:<34} {size / 2**20:5.1f} MiB")
    rest = sum(size for _, size in packages[12:])
    print(f"  {'(the rest)':<34} {rest / 2**20:5.1f} MiB")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--steps", "--traced"):
        sys.path.insert(0, str(ROOT))
        (child_steps if sys.argv[1] == "--steps" else child_traced)(sys.argv[2])
    else:
        main()
