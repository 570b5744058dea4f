"""ClusterNode with real threads and real timers, wired by the in-memory network: elections,
proposals, the coordinator's events, hand-off on stop, fork safety and misuse."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LocalCluster, poll

from catga_sync.coordinator import leader_elected, leader_lost
from catga_sync.errors import CatgaError, NotLeaderError
from catga_sync.node import ClusterNode
from catga_sync.raft import Entry, Role

ENDPOINTS = [f"http://localhost:{7100 + k}" for k in range(3)]
WAIT = 10.0


class Applied:
    """An applier that records what each node applied, in order."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, entry: Entry) -> object:
        with self.lock:
            self.entries.append(entry.data)
            return len(self.entries)


class Cluster(LocalCluster):
    """Three nodes on the memory network, each applying through an :class:`Applied`."""

    def __init__(self, size: int = 3) -> None:
        self.applied = {f"node{k}": Applied() for k in range(size)}
        super().__init__(
            size,
            endpoints=ENDPOINTS[:size],
            node_options=lambda k: {"applier": self.applied[f"node{k}"]},
            wait=WAIT,
        )


def wait_until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    return poll(predicate, timeout, what, interval=0.01)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_three_nodes_elect_one_leader_and_agree_on_it(cluster: Cluster) -> None:
    leader = cluster.leader()
    for node in cluster.nodes:
        wait_until(lambda n=node: n.status.leader_endpoint == leader.raft_id, WAIT, "agreement")
        assert node.coordinator.leader_endpoint == leader.raft_id
    followers = [n for n in cluster.nodes if n is not leader]
    assert all(n.status.role is Role.FOLLOWER for n in followers)
    # The leader's name travels with its requests: followers learn "node0", not only its URL.
    wait_until(
        lambda: all(n.coordinator.leader_id == leader.node_id for n in followers),
        WAIT,
        "leader names",
    )


def test_a_proposal_is_applied_on_every_node_in_order(cluster: Cluster) -> None:
    leader = cluster.leader()
    results = [leader.propose(f"cmd-{k}".encode(), timeout=WAIT) for k in range(20)]
    assert results == list(range(1, 21))
    for node in cluster.nodes:
        wait_until(lambda n=node: len(cluster.applied[n.node_id].entries) == 20, WAIT, "apply")
        assert cluster.applied[node.node_id].entries == [f"cmd-{k}".encode() for k in range(20)]


def test_proposing_on_a_follower_names_the_leader(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    wait_until(lambda: follower.status.leader_endpoint == leader.raft_id, WAIT, "leader known")
    with pytest.raises(NotLeaderError) as caught:
        follower.propose(b"x", timeout=WAIT)
    assert caught.value.leader_id == leader.raft_id
    assert str(caught.value) == f"This node is not the leader. Leader: {leader.raft_id}"


def test_read_barrier_waits_for_what_was_committed_before(cluster: Cluster) -> None:
    leader = cluster.leader()
    leader.propose(b"written", timeout=WAIT)
    follower = next(n for n in cluster.nodes if n is not leader)
    index = follower.read_barrier(timeout=WAIT)
    assert index >= leader.status.commit_index - 0  # the write is at or below it
    assert b"written" in cluster.applied[follower.node_id].entries


def test_stop_on_the_leader_hands_leadership_to_a_follower(cluster: Cluster) -> None:
    leader = cluster.leader()
    term = leader.status.term
    leader.stop()
    new = cluster.leader()
    assert new is not leader
    assert new.status.term == term + 1  # a TimeoutNow campaign: one term, no split vote
    leader.stop()  # idempotent


def test_coordinator_events_run_off_the_raft_loop(cluster: Cluster) -> None:
    seen: list[tuple[str, bool, str]] = []
    done = threading.Event()
    for node in cluster.nodes:

        def record(is_leader: bool, n: ClusterNode = node) -> None:
            seen.append((n.node_id, is_leader, threading.current_thread().name))
            if is_leader:
                done.set()

        node.coordinator.on_leadership_change(record)
        node.coordinator.on_leadership_change(lambda is_leader: 1 / 0)  # harms nothing
    elected: list[int] = []
    leader_elected.connect(lambda sender, term: elected.append(term), weak=False)
    leader = cluster.leader()
    assert done.wait(WAIT)
    # Events run off the loop, so the one for the leader found here may come a moment after
    # another node's (an earlier, short-lived leader under load): wait for it, do not peek.
    wait_until(lambda: (leader.node_id, True) in [(n, f) for n, f, _ in seen], WAIT, "gain")
    assert all(thread.startswith("catga-events-") for _, _, thread in seen)
    leader.stop()
    wait_until(lambda: (leader.node_id, False) in [(n, f) for n, f, _ in seen], WAIT, "loss")
    assert elected
    leader_elected.receivers.clear()
    leader_lost.receivers.clear()


def test_wait_for_leader_returns_the_leader_endpoint(cluster: Cluster) -> None:
    endpoint = cluster.nodes[0].coordinator.wait_for_leader(WAIT)
    assert endpoint in ENDPOINTS


def test_start_is_idempotent_and_a_stopped_node_cannot_restart(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    assert node.start() is node
    node.stop(transfer=False)
    with pytest.raises(CatgaError, match="was stopped"):
        node.start()


def test_calls_on_a_node_that_is_not_running_say_so() -> None:
    cluster = Cluster()
    with pytest.raises(CatgaError, match="not running"):
        cluster.nodes[0].propose(b"x", timeout=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_node_refuses_to_run_in_a_forked_child(cluster: Cluster) -> None:
    node = cluster.leader()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            node.propose(b"from the child", timeout=1)
            message = b"no error"
        except CatgaError as exc:
            message = str(exc).encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "cannot run in forked child" in message
    assert node.propose(b"parent still fine", timeout=WAIT) is not None


def test_a_read_index_request_lost_on_the_way_is_asked_again(cluster: Cluster) -> None:
    """The core never answers a read whose request was lost; the node asks again, as a new
    round, every two election timeouts, instead of waiting out the caller's timeout."""
    import time

    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    wait_until(lambda: follower.status.leader_endpoint == leader.raft_id, WAIT, "agreement")
    cluster.network.partition(follower.raft_id, leader.raft_id)  # the request is dropped
    threading.Timer(0.06, cluster.network.heal).start()  # well before an election timeout
    started = time.monotonic()
    index = follower.read_barrier(timeout=5.0)
    assert index >= 1
    assert time.monotonic() - started < 2.0  # answered by the retry at 0.3 s, not at 5 s


def _members(count: int) -> tuple[str, ...]:
    from helpers.wait import free_ports

    return tuple(f"http://127.0.0.1:{port}" for port in free_ports(count))


@pytest.mark.parametrize(
    ("voters", "state_path", "warned"),
    [(3, None, True), (1, None, False), (3, "db", False)],
    ids=["3-voters-in-memory", "1-voter-in-memory", "3-voters-on-sqlite"],
)
def test_a_multi_node_cluster_on_in_memory_state_warns_at_start(
    voters: int,
    state_path: str | None,
    warned: bool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from catga_sync.config import ClusterConfig

    members = _members(voters)
    config = ClusterConfig(
        local_node_endpoint=members[0],
        members=members,
        persistent_state_path=None if state_path is None else str(tmp_path),
    )
    node = ClusterNode(config, serve_http=False)
    caplog.set_level("WARNING", logger="catga_sync.node")
    try:
        node.start()
        node.start()  # idempotent: one warning
    finally:
        node.stop(transfer=False)
    memory = [r for r in caplog.records if "keeps its Raft state in memory" in r.getMessage()]
    assert len(memory) == (1 if warned else 0)
    if warned:
        assert "vote twice in one term" in memory[0].getMessage()
        assert "persistent_state_path" in memory[0].getMessage()


def test_the_pacemaker_job_runs_on_the_leader_only(cluster: Cluster) -> None:
    """The scheduler's tick job wakes a leader's loop for its heartbeats; a follower has none
    to send, so its job is paused, and the two swap when leadership moves."""

    def job_running(node: ClusterNode) -> bool:
        job = node.scheduler.get_job(node._pacemaker._job_id)
        assert job is not None  # paused, never removed, while the node runs
        return job.next_run_time is not None

    leader = cluster.leader()
    wait_until(
        lambda: [job_running(n) for n in cluster.nodes] == [n is leader for n in cluster.nodes],
        WAIT,
        "the job to run on the leader alone",
    )
    target = next(n for n in cluster.nodes if n is not leader)
    leader.transfer_leadership(target.raft_id)
    wait_until(lambda: target.status.role is Role.LEADER, WAIT, "the transfer")
    wait_until(
        lambda: job_running(target) and not job_running(leader),
        WAIT,
        "the job to move with the leadership",
    )
    term = target.status.term
    target.propose(b"after", timeout=WAIT)  # heartbeats and commits go on under the new leader
    assert target.status.term == term


def test_the_pacemaker_wakes_the_loop_only_when_it_overslept(tmp_path: Path) -> None:
    """A run of the tick job while the loop sleeps towards its own wake-up would be one more
    wake-up for nothing; it queues a tick only once that wake-up is more than a tick late."""
    import time

    from catga_sync.config import ClusterConfig

    config = ClusterConfig(local_node_endpoint=_members(1)[0], persistent_state_path=None)
    node = ClusterNode(config, serve_http=False)
    node.start()
    node.stop(transfer=False)  # the loop's thread has ended: its inbox shows what is queued
    loop = node._loop
    assert loop is not None
    assert loop._inbox.empty()
    loop._planned_wake = time.monotonic() + 60
    node._wake()
    assert loop._inbox.empty()
    loop._planned_wake = time.monotonic() - 2 * loop._tick_seconds
    node._wake()
    assert not loop._inbox.empty()


def test_the_pacemaker_changes_its_job_off_the_raft_loop_and_ends_on_the_last_leadership() -> None:
    """Pausing and resuming take the scheduler's job store lock, which a persistent job store
    holds for a database round trip: the status listener (on the Raft loop) hands them to a
    thread of their own, and quick changes end with the job as the last one says."""
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from catga_sync.runtime.status import NodeStatus
    from catga_sync.runtime.timers import Pacemaker

    touched_by: set[str] = set()

    class RecordingStore(MemoryJobStore):
        def update_job(self, job):  # type: ignore[no-untyped-def]
            touched_by.add(threading.current_thread().name)
            super().update_job(job)

    scheduler = BackgroundScheduler(jobstores={"default": RecordingStore()}, daemon=True)
    pacemaker = Pacemaker("n1", "tick-n1", 0.05, lambda: None, lambda: None, scheduler)
    follower = NodeStatus("n1", "r1", Role.FOLLOWER, 1, None, None, 0, 0, 0, ("r1",), True)
    leader = NodeStatus("n1", "r1", Role.LEADER, 2, "r1", "n1", 0, 0, 0, ("r1",), True)
    pacemaker.start()
    try:
        job = scheduler.get_job("tick-n1")
        assert job is not None and job.next_run_time is None  # added paused: not leading
        touched_by.clear()
        for _ in range(5):  # leadership won and lost quickly, won last
            pacemaker.on_status(follower, leader)
            pacemaker.on_status(leader, follower)
        pacemaker.on_status(follower, leader)
        wait_until(
            lambda: (
                getattr(scheduler.get_job("tick-n1"), "next_run_time", None) is not None
                and not pacemaker._applying
            ),
            WAIT,
            "the job to run as the last status says",
        )
        assert threading.current_thread().name not in touched_by
        assert "catga-tick-n1" in touched_by <= {"catga-tick-n1", "APScheduler"}
    finally:
        pacemaker.stop()
        scheduler.shutdown(wait=False)
