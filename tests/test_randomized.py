"""The randomized mixed-fault run: many seeded schedules, every invariant checked per event.

Each schedule mixes proposals, reads, leadership transfers, snapshots, partitions (isolate,
split, one-way, bridge), lossy/duplicating/reordering links, slow disks, crashes and restarts,
then heals everything and demands that the cluster converges. ``CATGA_SIM_SEEDS`` sets how many
seeds run (default 2,000; 100,000 for a soak) and ``CATGA_SIM_STEPS`` their length (300).
A failure names its seed; ``python -m catga_sync.testing replay SEED`` replays it.
"""

from __future__ import annotations

import os

import pytest

from catga_sync.testing import InvariantViolation, run_random

SEEDS = int(os.environ.get("CATGA_SIM_SEEDS", "2000"))
STEPS = int(os.environ.get("CATGA_SIM_STEPS", "300"))
CHUNKS = max(1, min(40, SEEDS // 50))
CHUNK_TIMEOUT = max(120, SEEDS // CHUNKS * STEPS // 1000)
"""Seconds one chunk may take: a step costs about 0.1 ms here, so 1 ms each is ten times that."""


@pytest.mark.timeout(CHUNK_TIMEOUT)
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_every_invariant(chunk: int) -> None:
    failures: list[str] = []
    for seed in range(chunk, SEEDS, CHUNKS):
        try:
            run_random(seed, steps=STEPS)
        except (InvariantViolation, TimeoutError) as exc:
            failures.append(f"seed {seed}: {exc}")
            break
    assert not failures, failures[0]


def test_a_seed_replays_identically() -> None:
    assert run_random(12345, steps=200) == run_random(12345, steps=200)


def test_the_checker_catches_a_broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove the run can fail: a core that ignores §5.4.1 (votes for any log) is caught."""
    from catga_sync.raft.log import RaftLog

    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    with pytest.raises(InvariantViolation):
        for seed in range(100):
            run_random(seed, steps=STEPS)
