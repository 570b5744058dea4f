"""Failover of three real processes of the example app, at the guide's defaults (150/50 ms).

Prints, with the machine and the number of runs:

- SIGKILL of the leader: time from the kill to a new leader committing an entry of its term
  (its no-op), p50/p99/max over ``--kills`` runs;
- the same for a graceful stop (SIGTERM: the leader hands leadership over first);
- term changes over ``--idle`` seconds of an idle cluster, then again with a CPU-burning
  thread in every node (``--burn-threads 1``);
- idle CPU per node (% of one core) and RSS per node.

    python benchmarks/failover.py [--kills 20] [--idle 600]

Time is measured by polling each survivor's ``GET /cluster`` every 5 ms, so figures carry up to
~5 ms of polling granularity.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import command_line, load_line, machine_line

from tests.e2e.harness import ExampleCluster, NodeProcess, poll

TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def new_leader_committed(cluster: ExampleCluster, old_term: int) -> NodeProcess | None:
    for node in cluster.running():
        try:
            status = node.status()
        except OSError:
            continue
        # A new leader has committed an entry of its own term (its no-op) once the entry at its
        # commit index carries its term.
        if (
            status["role"] == "leader"
            and status["term"] > old_term
            and status["commit_term"] == status["term"]
        ):
            return node
    return None


def one_failover(cluster: ExampleCluster, graceful: bool) -> float:
    leader = cluster.wait_for_leader(timeout=20)
    term = leader.status()["term"]
    started = time.monotonic()
    if graceful:
        leader.signal(signal.SIGTERM)
    else:
        leader.signal(signal.SIGKILL)
    poll(lambda: new_leader_committed(cluster, term), 20, "a new leader", interval=0.005)
    elapsed = time.monotonic() - started
    assert leader.process is not None
    leader.process.wait(20)
    leader.start()
    poll(lambda: leader.status()["leader_endpoint"] is not None, 30, "rejoin")
    return elapsed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_run(
    state: Path, seconds: float, burn: int, timing: list[str]
) -> tuple[int, list[float], list[float]]:
    extra = (["--burn-threads", str(burn)] if burn else []) + timing
    cluster = ExampleCluster(state, extra_args=extra)
    cluster.start()
    try:
        cluster.wait_for_leader(timeout=30)
        time.sleep(2)
        terms = {n.name: n.status()["term"] for n in cluster}
        pids = [n.process.pid for n in cluster if n.process]
        cpu_before = [cpu_seconds(p) for p in pids]
        time.sleep(seconds)
        cpu_after = [cpu_seconds(p) for p in pids]
        changes = max(n.status()["term"] - terms[n.name] for n in cluster)
        cpu = [100 * (a - b) / seconds for a, b in zip(cpu_after, cpu_before, strict=True)]
        rss = [rss_mib(p) for p in pids]
        return changes, cpu, rss
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--idle", type=float, default=600.0)
    parser.add_argument("--election-timeout", default="0.15", help="seconds")
    parser.add_argument("--heartbeat-interval", default="0.05", help="seconds")
    parser.add_argument("--idle-only", action="store_true", help="skip the failover runs")
    args = parser.parse_args()
    timing = [
        "--election-timeout",
        args.election_timeout,
        "--heartbeat-interval",
        args.heartbeat_interval,
    ]
    print(machine_line())
    print(command_line())
    print(load_line("before"))
    print(
        f"election {float(args.election_timeout) * 1000:.0f} ms, "
        f"heartbeat {float(args.heartbeat_interval) * 1000:.0f} ms; SQLite FULL"
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kill").mkdir()
        cluster = ExampleCluster(Path(tmp) / "kill", extra_args=timing)
        if not args.idle_only:
            cluster.start()
        try:
            for graceful in (False, True) if not args.idle_only else ():
                times = [one_failover(cluster, graceful) for _ in range(args.kills)]
                what = "graceful stop (SIGTERM, hand-off)" if graceful else "SIGKILL of leader"
                print(
                    f"{what:<34} -> new leader committed: n={len(times)}  "
                    f"p50 {statistics.median(times) * 1000:6.0f} ms  "
                    f"p99 {percentile(times, 99) * 1000:6.0f} ms  "
                    f"max {max(times) * 1000:6.0f} ms"
                )
        finally:
            cluster.stop()
        for burn in (0, 1):
            state = Path(tmp) / f"idle{burn}"
            state.mkdir()
            changes, cpu, rss = idle_run(state, args.idle, burn, timing)
            label = "with a CPU-burning thread per node" if burn else "idle"
            print(f"term changes over {args.idle:.0f} s, {label}: {changes}")
            if not burn:
                print("idle CPU per node (% of a core): " + ", ".join(f"{c:.2f}" for c in cpu))
                print("RSS per node (MiB): " + ", ".join(f"{r:.1f}" for r in rss))
    print(load_line("after"))


if __name__ == "__main__":
    main()
