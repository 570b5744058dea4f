"""``python -m catga_sync.testing``: the guided demo, the fuzz soak, the replay of one seed.

::

    python -m catga_sync.testing demo                 # elect, replicate, crash the leader, recover
    python -m catga_sync.testing fuzz --seeds 1000    # randomized mixed-fault schedules
    python -m catga_sync.testing replay 1234          # one seed, with its report
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .invariants import InvariantViolation
from .randomized import _converged, run_random
from .simulator import SimulatedCluster

__all__ = ["main"]


def _demo() -> None:
    cluster = SimulatedCluster(3, seed=7)
    print("A simulated 3-node Raft cluster (election timeout 10-19 ticks, heartbeat 1 tick).")
    ticks = cluster.run_until(lambda: cluster.leader() is not None)
    leader = cluster.wait_for_leader()
    print(
        f"t={cluster.now:>4}: {leader} elected leader of term {cluster.core(leader).term} "
        f"after {ticks} ticks"
    )
    for word in (b"create order 1", b"create order 2", b"pay order 1"):
        entry = cluster.commit(word)
        print(
            f"t={cluster.now:>4}: {word.decode()!r} committed at index {entry.index} "
            "and applied on every node"
        )
    print(f"t={cluster.now:>4}: crash the leader {leader}")
    cluster.crash(leader)
    new_leader = cluster.wait_for_leader()
    print(
        f"t={cluster.now:>4}: {new_leader} elected leader of term {cluster.core(new_leader).term}"
    )
    entry = cluster.commit(b"ship order 1")
    print(
        f"t={cluster.now:>4}: 'ship order 1' committed at index {entry.index} by the "
        "surviving majority"
    )
    cluster.restart(leader)
    cluster.run_until(lambda: _converged(cluster))
    print(f"t={cluster.now:>4}: {leader} restarted from its persisted log and caught up")
    for node_id in sorted(cluster.nodes):
        items = [i.decode() for i in cluster.applied(node_id)]
        print(f"        {node_id} applied {items}")
    print(
        "Every safety invariant was checked after every event. "
        "Try: python -m catga_sync.testing fuzz --seeds 200"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv``: the arguments after the program name); the exit status."""
    parser = argparse.ArgumentParser(prog="python -m catga_sync.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="elect, replicate, crash the leader, recover")
    fuzz = sub.add_parser("fuzz", help="run randomized mixed-fault schedules")
    fuzz.add_argument("--seeds", type=int, default=1000)
    fuzz.add_argument("--first", type=int, default=0)
    fuzz.add_argument("--steps", type=int, default=300)
    replay = sub.add_parser("replay", help="re-run one seed and print its schedule")
    replay.add_argument("seed", type=int)
    replay.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.command == "demo":
        _demo()
        return 0
    if args.command == "fuzz":
        for seed in range(args.first, args.first + args.seeds):
            run_random(seed, steps=args.steps)
        print(f"{args.seeds} seeds x {args.steps} steps: no invariant violated")
        return 0
    try:
        report = run_random(args.seed, steps=args.steps)
    except (InvariantViolation, TimeoutError) as exc:
        print(exc)
        return 1
    print(report)
    return 0
