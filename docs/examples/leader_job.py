"""A leader-gated APScheduler job on a three-node cluster: it fires on the leader only, and after
the leader dies the new one goes on from the last fire time recorded in the log — no fire time
run twice, none skipped.

Run it: ``python docs/examples/leader_job.py`` (it asserts what it prints; the test suite runs
it, every wait bounded). The three nodes live in this process on an
in-memory network so that the script runs anywhere; in a Flask app the job is
``@cluster.singleton_job("interval", seconds=30, id="purge")``, and in a worker
``@LeaderJobs.of(node).scheduled_job(...)`` as here.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from itertools import pairwise

from catga_sync.config import ClusterConfig
from catga_sync.jobs import JobContext, JobRuns, LeaderJobs
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage
from catga_sync.transport.memory import MemoryNetwork, MemoryTransport

ENDPOINTS = [f"http://localhost:{5000 + k}" for k in range(3)]
INTERVAL = 0.2
ran = threading.Condition()
runs: list[tuple[str, int, datetime]] = []  # (node, fencing token, fire time)


def make_node(network: MemoryNetwork, k: int) -> ClusterNode:
    config = ClusterConfig(
        local_node_endpoint=ENDPOINTS[k],
        members=tuple(ENDPOINTS),
        node_id=f"node{k}",
        election_timeout=timedelta(milliseconds=150),
        heartbeat_interval=timedelta(milliseconds=50),
    )
    node = ClusterNode(
        config,
        storage=MemoryStorage(config.node_id),
        transport=MemoryTransport(network, config.raft_id, config.node_id),
        serve_http=False,
    )

    # On every node; paused on followers, resumed on the leader. A `ctx` parameter is optional.
    @LeaderJobs.of(node).scheduled_job("interval", seconds=INTERVAL, id="purge")
    def purge(ctx: JobContext) -> None:
        print(f"{node.node_id}: purge for {ctx.fire_time:%H:%M:%S.%f} (token {ctx.fencing_token})")
        with ran:
            runs.append((node.node_id, ctx.fencing_token, ctx.fire_time))
            ran.notify_all()

    network.register(node)
    return node


def wait_for_runs(count: int) -> None:
    with ran:
        assert ran.wait_for(lambda: len(runs) >= count, timeout=10), "the job did not run"


def wait_until_recorded(node: ClusterNode, fired: datetime) -> None:
    """Until the log says ``fired`` completed (a run's end is recorded through the log)."""
    record = node.state(JobRuns)
    deadline = time.monotonic() + 10
    while (last := record.last("purge")) is None or (
        datetime.fromisoformat(last["fire_time"]) < fired  # a linearizable read
    ):
        assert time.monotonic() < deadline, f"{fired} was never recorded as completed"
        time.sleep(0.01)


def steps_between(fires: list[datetime]) -> list[float]:
    """How many intervals lie between one fire time and the next."""
    return [(b - a).total_seconds() / INTERVAL for a, b in pairwise(fires)]


def main() -> None:
    network = MemoryNetwork()
    nodes = {node.node_id: node for node in (make_node(network, k) for k in range(3))}
    for node in nodes.values():
        node.start()
    wait_for_runs(3)
    leader_id, old_token, fired = runs[-1]
    wait_until_recorded(nodes[leader_id], fired)
    print(f"kill {leader_id}; the log says {fired:%H:%M:%S.%f} was the last fire time completed")
    nodes[leader_id].stop(transfer=False)
    network.unregister(nodes[leader_id].raft_id)
    wait_for_runs(len(runs) + 3)
    with ran:
        seen = list(runs)
    fires = [fire for _, _, fire in seen]
    steps = sorted({round(step) for step in steps_between(fires)})
    print(f"{len(fires)} runs on {sorted({n for n, _, _ in seen})}, {len(set(fires))} fire times")
    print(f"each one {steps} interval(s) after the one before (more than 1: coalesced)")

    # What it showed, checked: one node at a time, the new leader with a newer fencing token,
    # every fire time on the trigger's grid, none the log recorded as completed run again, and
    # each one that fell due during the failover run or counted as coalesced (a miss).
    old_runs = [fire for node, _, fire in seen if node == leader_id]
    new_runs = [(node, token, fire) for node, token, fire in seen if node != leader_id]
    (new_id,) = {node for node, _, _ in new_runs}
    assert all(token > old_token for _, token, _ in new_runs)
    new_fires = [fire for _, _, fire in new_runs]
    assert old_runs + new_fires == fires, "the old leader ran nothing after the new one started"
    for step in steps_between(old_runs) + steps_between(new_fires):
        assert step >= 1 - 1e-3 and abs(step - round(step)) < 4e-3, step
    assert all(fire > fired for fire in new_fires), "a completed fire time ran again"
    (across,) = steps_between([old_runs[-1], new_fires[0]])
    assert abs(across - round(across)) < 4e-3, across  # the new leader keeps the old one's grid
    if LeaderJobs.of(nodes[leader_id]).get("purge").unrecorded == 0:  # every old run recorded
        assert round(across) >= 1 and len(set(fires)) == len(fires), "a fire time ran twice"
    misses = LeaderJobs.of(nodes[new_id]).stats.leader_job_misses
    assert misses >= round(across) - 1, "a fire time was skipped"
    for node in nodes.values():
        node.stop(transfer=False)


if __name__ == "__main__":
    main()
