"""Real partitions of real processes: the example app's nodes, each on its own network
namespace, under the nemeses of :mod:`.nemesis`, with clients recording a history that the
checkers then judge (linearizable compare-and-set and reads, no acknowledged write lost,
fencing tokens, leases, singleton runs), and convergence after heal.

A run: start the cluster, create the orders, start the clients, then rounds of
fault-then-heal chosen by the seed, then heal everything, wait for one leader and one applied
index everywhere, read every acknowledged order once more, and check. The seed and the
timeline of faults are printed when a run fails.
"""

from __future__ import annotations

import random
import time
import zlib
from dataclasses import dataclass, field

import pytest
import requests

from tests.e2e.harness import cluster_status, poll

from .cluster import ELECTION_TIMEOUT, FaultCluster, HostedNode
from .judge import judge
from .nemesis import FAULTS, heal
from .workload import Workload

CONVERGE_WITHIN = 15.0
"""Seconds from the last heal to one leader and one applied index on every node: restarted
processes take about 2 s to start, then an election or two."""

pytestmark = pytest.mark.faults


@dataclass
class Run:
    seed: int
    timeline: list[str] = field(default_factory=list)

    def say(self, line: str, started: float) -> None:
        self.timeline.append(f"{time.monotonic() - started:6.2f}s {line}")

    def __str__(self) -> str:
        return f"seed {self.seed}:\n  " + "\n  ".join(self.timeline)


def run_nemesis(
    cluster: FaultCluster,
    faults: list[str],
    seed: int,
    *,
    rounds: int = 3,
    stack: int = 1,
    fault_seconds: tuple[float, float] = (1.5, 3.0),
    heal_seconds: tuple[float, float] = (1.0, 2.0),
) -> None:
    rng = random.Random(seed)
    run = Run(seed)
    workload = Workload(lambda: [n.url for n in cluster.nodes], seed)
    workload.setup()
    started = time.monotonic()
    workload.start()
    try:
        for _ in range(rounds):
            for _ in range(rng.randint(1, stack)):
                run.say(FAULTS[rng.choice(faults)](cluster, rng), started)
            time.sleep(rng.uniform(*fault_seconds))
            run.say(heal(cluster), started)
            time.sleep(rng.uniform(*heal_seconds))
    finally:
        cluster.heal_everything()
        workload.stop()
    run.say("clients stopped", started)
    print(run)
    view = poll(cluster.converged, CONVERGE_WITHIN, f"convergence after heal ({run})")
    run.say(f"converged: {view}", started)
    final = workload.final_reads(view["leader"])
    verdicts = judge(workload.history, final, cluster, leader_url=view["leader"])
    problems = [v.explanation for v in verdicts if not v.ok]
    history = workload.history
    summary = (
        f"{len(history.ops)} ops ({sum(o.complete is None for o in history.ops)} indeterminate), "
        f"{len(history.grants)} lock grants, {len(history.created)} orders created, "
        f"errors {dict(history.errors)}"
    )
    print(summary)
    assert not problems, f"{run}\n{summary}\n" + "\n".join(problems)
    assert len(history.ops) > 50 and history.grants, f"the workload barely ran: {summary}"


PARTITIONS_3 = [
    "isolate_leader",
    "isolate_follower",
    "leader_deaf",
    "leader_mute",
    "one_way_follower",
    "lossy",
    "duplicating",
    "congested",
]


@pytest.mark.parametrize("fault", PARTITIONS_3)
def test_three_nodes_under_one_kind_of_fault(cluster3: FaultCluster, fault: str) -> None:
    run_nemesis(cluster3, [fault], seed=zlib.crc32(fault.encode()) % 1000)


@pytest.mark.parametrize("fault", ["majority_minority", "bridge"])
def test_five_nodes_split_or_bridged(cluster5: FaultCluster, fault: str) -> None:
    run_nemesis(cluster5, [fault], seed=zlib.crc32(fault.encode()) % 1000)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_everything_mixed_with_kills_and_pauses(cluster3: FaultCluster, seed: int) -> None:
    run_nemesis(cluster3, list(FAULTS), seed, rounds=5, stack=2)


def test_an_isolated_leader_steps_down_and_its_leader_work_stops(cluster3: FaultCluster) -> None:
    leader = cluster3.wait_for_leader()
    poll(lambda: _task_state(leader) == "running", 10, "the OutboxProcessor running on the leader")
    cut = time.monotonic()
    cluster3.network.isolate(leader.name)
    poll(lambda: (cluster_status(leader) or {}).get("role") != "leader", 5, "the step-down")
    stepped_down = time.monotonic() - cut
    print(f"stepped down {stepped_down:.3f} s after the cut (election timeout {ELECTION_TIMEOUT})")
    # Check-quorum: a leader that has heard from no quorum for one election timeout steps
    # down; the cut falls anywhere in its current window, so up to two windows pass, plus the
    # time to see it from here on a loaded machine.
    assert stepped_down < 2 * ELECTION_TIMEOUT + 0.5
    poll(lambda: _task_state(leader) != "running", 5, "the OutboxProcessor stopped on it")
    # The isolated node answers with the typed error, never with what it last knew.
    response = requests.get(f"{leader.url}/orders/1", timeout=10)
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "no_leader", response.text
    created = requests.post(f"{leader.url}/orders", json={"customer": "c", "amount": 1}, timeout=10)
    assert (created.status_code, created.json()["error"]) == (503, "no_leader"), created.text


def test_the_minority_never_serves_a_read_staler_than_the_majority(cluster3: FaultCluster) -> None:
    leader = cluster3.wait_for_leader()
    order = requests.post(f"{leader.url}/orders", json={"customer": "c", "amount": 1}, timeout=10)
    assert order.status_code == 201, order.text
    key = order.json()["id"]
    follower = next(n for n in cluster3.nodes if n is not leader)
    cluster3.network.isolate(follower.name)
    updated = requests.patch(
        f"{leader.url}/orders/{key}", json={"status": "paid", "expected_version": 1}, timeout=10
    )
    assert updated.status_code == 200, updated.text
    # At once and later: the isolated follower must not answer with version 1.
    for _ in range(5):
        response = requests.get(f"{follower.url}/orders/{key}", timeout=10)
        assert response.status_code != 200 or response.json()["version"] == 2, response.text
        if response.status_code != 200:
            assert response.status_code == 503, response.text
            assert response.json()["error"] in ("no_leader", "commit_timeout"), response.text
        time.sleep(0.3)
    final = requests.get(f"{follower.url}/orders/{key}", timeout=10)
    assert (final.status_code, final.json()["error"]) == (503, "no_leader"), final.text


def _task_state(node: HostedNode) -> str | None:
    status = cluster_status(node)
    tasks = (status or {}).get("singleton_tasks") or []
    return tasks[0]["state"] if tasks else None
