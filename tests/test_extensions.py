"""The engine and its extensions: installing, the lifecycle, a start that fails, leadership
changes and what extensions add to GET /cluster and /metrics."""

from __future__ import annotations

import gc
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import LocalCluster, free_ports, poll

from catga_sync import ClusterConfig, ClusterNode, Extension, NodeHandle
from catga_sync.errors import (
    AlreadyRegisteredError,
    CatgaError,
    ConfigError,
    NodeNotRunningError,
    UsageError,
)
from catga_sync.metrics import render
from catga_sync.raft import Role
from catga_sync.runtime import LeadershipChange, LeadershipWatch, NodeStatus, counter
from catga_sync.runtime.status import NodeStats, StatusBoard
from catga_sync.singleton import SingletonTasks, TaskContext
from catga_sync.storage import MemoryStorage, open_storage
from catga_sync.web.ops import cluster_document

WAIT = 10.0


def solo(node_id: str = "solo", port: int | None = None, **options: Any) -> ClusterNode:
    """A one-node cluster: it elects itself."""
    endpoint = f"http://127.0.0.1:{port or free_ports(1)[0]}"
    config = ClusterConfig(
        local_node_endpoint=endpoint,
        node_id=node_id,
        election_timeout=timedelta(milliseconds=150),
        heartbeat_interval=timedelta(milliseconds=50),
    )
    options.setdefault("storage", MemoryStorage(node_id))
    options.setdefault("serve_http", False)
    return ClusterNode(config, **options)


@dataclass
class Stats:
    recorded: int = counter("Things the test extension recorded")


class Recording(Extension):
    """Records its lifecycle calls (in ``events``, shared by several) and leadership changes."""

    def __init__(self, name: str, events: list[str], fail_start: bool = False) -> None:
        self.name = name  # type: ignore[misc]  # one class, several names
        self.events = events
        self.fail_start = fail_start
        self.changes: list[LeadershipChange] = []
        self.stats = Stats()

    def install(self, node: NodeHandle) -> None:
        self.events.append(f"install {self.name}")
        self.node = node
        LeadershipWatch(node, self.changes.append)

    def start(self) -> None:
        self.events.append(f"start {self.name} running={self.node.running}")
        if self.fail_start:
            raise OSError(f"{self.name} could not start")

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")

    def describe(self) -> dict[str, Any]:
        return {f"{self.name}_changes": len(self.changes), "role": "not mine to set"}

    def counters(self) -> Stats:
        self.stats.recorded = len(self.changes)
        return self.stats


def test_extensions_install_at_once_start_in_order_and_stop_in_reverse() -> None:
    events: list[str] = []
    node = solo()
    first = node.add_extension(Recording("first", events))
    node.add_extension(Recording("second", events))
    assert events == ["install first", "install second"]
    assert list(node.extensions)[-2:] == ["first", "second"]
    assert node.extension("first") is first
    with node:
        assert events[2:] == ["start first running=True", "start second running=True"]
        node.wait_for(lambda s: s.is_leader, WAIT)
        node.run_on_loop(lambda: None)
        assert [(c.previous, c.leading, c.stopped) for c in first.changes] == [
            (None, node.status.term, False)
        ]
        # GET /cluster: each extension's part; a node's own field is not overwritten.
        document = cluster_document(node)
        assert document["first_changes"] == 1 and document["second_changes"] == 1
        assert document["role"] == "leader"
        assert document["singleton_tasks"] == [] and document["singleton_jobs"] == []
        metrics = render(node)[0].decode()
        assert 'catga_recorded_total{node_id="solo"} 1.0' in metrics
        assert "# HELP catga_recorded_total Things the test extension recorded" in metrics
        assert 'catga_snapshots_total{node_id="solo"} 0.0' in metrics  # counted and exported
        assert 'catga_singleton_task_starts_total{node_id="solo"} 0.0' in metrics
    assert events[4:] == ["stop second", "stop first"]
    assert first.changes[-1].stopped and first.changes[-1].lost


def test_add_extension_refuses_no_name_a_taken_name_and_a_started_node() -> None:
    node = solo()
    with pytest.raises(UsageError, match="needs a non-empty `name`"):
        node.add_extension(Extension())
    with pytest.raises(AlreadyRegisteredError, match="'coordinator' is already installed"):
        node.add_extension(Recording("coordinator", []))
    with node, pytest.raises(UsageError, match="before starting node solo"):
        node.add_extension(Recording("late", []))
    assert "late" not in node.extensions


def test_a_start_that_fails_in_an_extension_has_voted_for_nothing_and_is_final(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    node = solo(storage=open_storage("solo", str(tmp_path)))
    node.add_extension(Recording("ok", events))
    node.add_extension(Recording("broken", events, fail_start=True))
    with pytest.raises(OSError, match="broken could not start"):
        node.start()
    assert events == [
        "install ok",
        "install broken",
        "start ok running=True",
        "start broken running=True",
        "stop ok",
    ]
    assert not node.running and not node.status.running
    with pytest.raises(NodeNotRunningError, match=r"failed to start .*create a new ClusterNode"):
        node.start()
    # The storage was released, and nothing was voted or written: the loop never ran.
    storage = open_storage("solo", str(tmp_path))
    try:
        state = storage.open()
        assert (state.hard_state.term, state.hard_state.vote, state.entries) == (0, None, ())
    finally:
        storage.close()


def test_an_embedded_server_whose_port_is_taken_fails_the_start_before_any_leader_work() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ran: list[TaskContext] = []
    try:
        node = solo(port=taken.getsockname()[1], serve_http=True)
        SingletonTasks.of(node).add(ran.append, name="never")
        with pytest.raises(ConfigError, match=r"cannot serve its endpoint .* cannot be bound"):
            node.start()
        assert not node.running
        assert node.status.term == 0 and ran == []
    finally:
        taken.close()


def test_a_node_leaks_no_thread_and_is_collected_after_it_stopped() -> None:
    before = threading.active_count()
    refs = []
    for k in range(3):
        node = solo(f"leak{k}")
        with node:
            node.wait_for(lambda s: s.is_leader, WAIT)  # the coordinator's thread starts
        refs.append(weakref.ref(node))
        del node
    poll(lambda: threading.active_count() <= before, WAIT, "the nodes' threads end")
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_a_stop_whose_loop_hangs_in_a_write_returns_and_the_loop_closes_the_storage_later() -> None:
    class SlowStorage(MemoryStorage):
        slow = threading.Event()
        writing = threading.Event()
        wrote = threading.Event()
        closed = threading.Event()

        def persist(self, **kwargs: Any) -> None:
            if self.slow.is_set():
                self.writing.set()
                time.sleep(6.5)  # longer than the 5 s a stop waits for the loop
                self.wrote.set()
            super().persist(**kwargs)

        def close(self) -> None:
            self.closed.set()
            super().close()

    storage = SlowStorage("slow")
    node = solo("slow", storage=storage)
    node.start()
    node.wait_for(lambda s: s.is_leader, WAIT)
    storage.slow.set()
    outcome: list[BaseException] = []

    def propose() -> None:
        try:
            node.submit(b"", timeout=0.1)
        except CatgaError as exc:  # its outcome is unknown: the write hangs
            outcome.append(exc)

    worker = threading.Thread(target=propose, daemon=True)
    worker.start()  # a proposal: its batch hangs in persist
    assert storage.writing.wait(WAIT)
    node.stop(transfer=False)
    assert not storage.wrote.is_set()  # the stop returned without waiting for the write
    assert not storage.closed.is_set()  # and left the storage to the loop, which owns it
    assert storage.closed.wait(WAIT)  # the loop closes it once its batch ends
    assert storage.wrote.is_set() and not node.running
    worker.join(WAIT)
    assert len(outcome) == 1


def test_leadership_watch_reports_elected_lost_a_newer_term_and_stopped_only() -> None:
    class Node:
        def __init__(self) -> None:
            self.status = status(Role.FOLLOWER, 1)
            self.listeners: list[Any] = []

        def add_status_listener(self, listener: Any) -> None:
            self.listeners.append(listener)

        def publish(self, new: NodeStatus) -> None:
            old, self.status = self.status, new
            for listener in self.listeners:
                listener(old, new)

    node = Node()
    changes: list[LeadershipChange] = []
    watch = LeadershipWatch(node, changes.append)  # type: ignore[arg-type]
    node.publish(status(Role.FOLLOWER, 1, commit=5))  # a commit: nothing
    node.publish(status(Role.LEADER, 2))
    node.publish(status(Role.LEADER, 2, commit=9))  # a commit while leading: nothing
    node.publish(status(Role.LEADER, 4))  # re-elected in a newer term: a loss and a gain
    node.publish(status(Role.FOLLOWER, 5))
    node.publish(status(Role.FOLLOWER, 5, running=False))
    got = [(c.previous, c.leading, c.stopped, c.elected, c.lost) for c in changes]
    assert got == [
        (None, 2, False, True, False),
        (2, 4, False, True, True),
        (4, None, False, False, True),
        (None, None, True, False, False),
    ]
    assert watch.leading is None and watch.stopped


def test_status_board_serializes_publishers_and_wakes_waiters_after_the_listeners() -> None:
    board = StatusBoard(status(Role.FOLLOWER, 1), NodeStats())
    seen: list[int] = []
    inside = threading.Event()
    proceed = threading.Event()

    def slow_listener(old: NodeStatus, new: NodeStatus) -> None:
        seen.append(new.term)
        if new.term == 2:
            inside.set()
            assert proceed.wait(WAIT)

    board.add_listener(slow_listener)
    woke: list[list[int]] = []
    waiter = threading.Thread(
        target=lambda: woke.append(list(board.wait_for(lambda s: s.term >= 2, WAIT, "n") and seen))
    )
    waiter.start()
    first = threading.Thread(target=board.publish, args=(status(Role.FOLLOWER, 2),))
    first.start()
    assert inside.wait(WAIT)
    second = threading.Thread(target=board.publish, args=(status(Role.FOLLOWER, 3),))
    second.start()
    time.sleep(0.1)  # the second publisher waits for the first one's listeners
    assert seen == [2]
    proceed.set()
    for thread in (first, second, waiter):
        thread.join(WAIT)
    assert seen == [2, 3]
    assert woke and woke[0][0] == 2  # the waiter woke after the listener had run


def test_the_built_in_features_are_extensions_of_every_node_of_a_cluster() -> None:
    with LocalCluster(3) as cluster:
        leader = cluster.leader()
        assert {
            "locks",
            "coordinator",
            "singleton_tasks",
            "singleton_jobs",
            "forwarding",
        } <= set(leader.extensions)
        assert SingletonTasks.of(leader) is leader.extensions["singleton_tasks"]


def status(role: Role, term: int, *, commit: int = 0, running: bool = True) -> NodeStatus:
    leader = "http://n0" if role is Role.LEADER else None
    return NodeStatus("n0", "http://n0", role, term, leader, leader, commit, 0, 0, (), running)
