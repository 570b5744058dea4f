"""The randomized mixed-fault run: one seeded schedule of everything that can go wrong.

:func:`run_random` mixes proposals, reads, leadership transfers and snapshots with partitions,
lossy links, crashes and restarts on a :class:`~catga_sync.testing.simulator.SimulatedCluster`;
then it heals everything and demands progress. The invariants are checked after every event, so
a seed that breaks safety fails where it breaks, and the same seed replays it exactly
(``python -m catga_sync.testing replay SEED``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CatgaError
from .simulator import SimulatedCluster

__all__ = ["RunReport", "run_random"]


@dataclass(frozen=True)
class RunReport:
    """What one :func:`run_random` schedule did, printed by ``replay``."""

    seed: int
    steps: int
    committed: int
    elections: int
    delivered: int
    dropped: int


def run_random(
    seed: int,
    *,
    steps: int = 300,
    nodes: int | None = None,
    settle_ticks: int = 600,
    observe: Callable[[SimulatedCluster, str], None] | None = None,
) -> RunReport:
    """One randomized schedule of proposals, reads, transfers, snapshots, partitions, lossy
    links, crashes and restarts; then heal everything and check that the cluster converges."""
    rng = random.Random(seed)
    size = nodes or rng.choice((3, 3, 5))
    cluster = SimulatedCluster(
        size,
        seed=seed,
        election_ticks=rng.choice((5, 10)),
        ready_lag=rng.choice((0.0, 0.0, 0.2)),
        max_entries_bytes=rng.choice((64, 1 << 20)),
        max_inflight=rng.choice((1, 4, 256)),
        snapshot_chunk_bytes=rng.choice((16, 1 << 16)),
    )
    cluster.set_faults(
        drop=rng.choice((0.0, 0.02, 0.1)),
        duplicate=rng.choice((0.0, 0.02)),
        delay=rng.choice(((0, 0), (0, 1), (0, 3))),
    )
    ids = sorted(cluster.nodes)
    proposals = 0
    reads = 0

    def act(name: str) -> None:
        if observe is not None:
            observe(cluster, name)

    for _ in range(steps):
        roll = rng.random()
        alive = cluster.alive()
        leader = cluster.leader()
        if roll < 0.30 and leader is not None:
            try:
                cluster.propose(f"{seed}:{proposals}".encode(), leader)
                proposals += 1
                act("propose")
            except CatgaError:
                pass
        elif roll < 0.34 and alive:
            try:
                reads += 1
                cluster.read_index(rng.choice(alive), f"read-{reads}")
                act("read")
            except CatgaError:
                pass
        elif roll < 0.36 and leader is not None:
            try:
                cluster.transfer_leadership(rng.choice(ids), leader)
                act("transfer")
            except CatgaError:
                pass
        elif roll < 0.38 and alive:
            node_id = rng.choice(alive)
            core = cluster.core(node_id)
            cluster.flush()
            if core.applied_index > core.log.offset:
                cluster.compact(node_id)
                act("compact")
        elif roll < 0.40:
            cluster.isolate(rng.choice(ids))
            act("isolate")
        elif roll < 0.42:
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randint(1, len(ids) - 1)
            cluster.split(shuffled[:cut], shuffled[cut:])
            act("split")
        elif roll < 0.43:
            a, b = rng.sample(ids, 2)
            cluster.one_way(a, b)
            act("one_way")
        elif roll < 0.44 and len(ids) >= 3:
            shuffled = rng.sample(ids, len(ids))
            via = shuffled[0]
            half = (len(ids) - 1) // 2
            cluster.bridge(shuffled[1 : 1 + half], shuffled[1 + half :], via)
            act("bridge")
        elif roll < 0.50:
            cluster.heal()
            act("heal")
        elif roll < 0.52 and alive:
            cluster.crash(rng.choice(alive))
            act("crash")
        elif roll < 0.60:
            crashed = [n for n in ids if n not in alive]
            if crashed:
                cluster.restart(rng.choice(crashed))
                act("restart")
        cluster.step()

    # Heal everything and demand progress: a leader, and every node applying the same log.
    cluster.heal()
    cluster.set_faults()
    cluster.ready_lag = 0.0
    for node_id in ids:
        if not cluster.nodes[node_id].alive:
            cluster.restart(node_id)
    cluster.commit(f"{seed}:final".encode(), max_ticks=settle_ticks)
    cluster.run_until(lambda: _converged(cluster), max_ticks=settle_ticks)
    cluster.check_converged()
    return RunReport(
        seed,
        steps,
        committed=max(cluster.invariants.committed, default=0),
        elections=len(cluster.invariants.leader_of_term),
        delivered=cluster.delivered,
        dropped=cluster.dropped,
    )


def _converged(cluster: SimulatedCluster) -> bool:
    leader = cluster.leader()
    if leader is None:
        return False
    target = cluster.core(leader).commit_index
    return all(cluster.core(n).applied_index == target for n in cluster.alive())
