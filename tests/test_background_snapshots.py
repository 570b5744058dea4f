"""Snapshots taken in a forked child (runtime/snapshots.py): real forks, real pipes, real
signals; then three nodes whose leader keeps committing while its child encodes."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import LocalCluster, poll

from catga_sync.fsm import StateMachine, command, query
from catga_sync.node import ClusterNode
from catga_sync.runtime.snapshots import (
    ENCODE_BYTES_PER_SECOND,
    BackgroundSnapshots,
    compact_from_child,
)
from catga_sync.testing import SimulatedCluster

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

WAIT = 10.0


def _wait_for(path: Path, seconds: float = 20.0) -> None:
    """In a child: wait until the test creates ``path`` (a gate no lock can stand in for)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


class _Delivered:
    """The loop's side: takes what the reader hands over and says it is done with it."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, bytes | None]] = []
        self.event = threading.Event()
        self.snapshots: BackgroundSnapshots | None = None

    def __call__(self, index: int, term: int, data: bytes | None) -> None:
        self.items.append((index, term, data))
        self.event.set()
        if self.snapshots is not None:
            self.snapshots.done(index, taken=data is not None)

    def taken(self) -> list[tuple[int, int, bytes | None]]:
        return [item for item in self.items if item[2] is not None]


def _snapshots(
    snapshot: Callable[[], bytes], *, after: float = 0, every: int = 10, timeout: float = 600
) -> tuple[BackgroundSnapshots, _Delivered]:
    delivered = _Delivered()
    snapshots = BackgroundSnapshots(
        "n1", snapshot, delivered, after=after, every=every, timeout=timeout
    )
    delivered.snapshots = snapshots
    return snapshots, delivered


def _gone(pid: int) -> bool:
    """The child was reaped (no zombie left behind)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_a_child_encodes_the_state_as_of_the_fork_and_the_reader_hands_it_over(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    state = {"values": [1, 2, 3]}

    def snapshot() -> bytes:
        _wait_for(gate)  # the parent changes its state meanwhile
        return json.dumps({"state": state, "pid": os.getpid()}).encode()

    snapshots, delivered = _snapshots(snapshot)
    assert snapshots.wanted
    snapshots.start(7, 2)
    pid = snapshots.child_pid
    assert pid is not None and snapshots.busy
    state["values"].append(4)  # after the fork: the child's copy must not see it
    gate.touch()
    assert delivered.event.wait(WAIT)
    [(index, term, data)] = delivered.items
    body = json.loads(data)
    assert (index, term) == (7, 2)
    assert body["state"] == {"values": [1, 2, 3]}
    assert body["pid"] == pid != os.getpid()
    poll(lambda: not snapshots.busy, WAIT, "the reader to finish")
    assert snapshots.taken == 1 and snapshots.failed == 0
    assert _gone(pid)
    snapshots.stop()


def test_a_large_snapshot_crosses_the_pipe_whole() -> None:
    blob = os.urandom(3 << 20)  # larger than a pipe's buffer and than one read
    snapshots, delivered = _snapshots(lambda: blob)
    snapshots.start(1, 1)
    assert delivered.event.wait(WAIT)
    assert delivered.items[0][2] == blob
    snapshots.stop()


def test_a_failing_child_costs_only_that_snapshot_and_the_next_waits_its_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fail = [True]

    def snapshot() -> bytes:
        if fail[0]:
            raise RuntimeError("cannot encode")
        return b"fine"

    snapshots, delivered = _snapshots(snapshot, every=10)
    with caplog.at_level(logging.WARNING, logger="catga_sync.node"):
        assert snapshots.plan(5) == "fork"
        snapshots.start(5, 1)
        poll(lambda: snapshots.failed == 1 and not snapshots.busy, WAIT, "the failure")
    assert delivered.items == [(5, 1, None)]  # handed over as failed, for the loop's count
    assert "background snapshot at index 5 was not taken" in caplog.text
    assert "ended before writing it" in caplog.text  # it exited without a byte
    # No fork at every wake-up: the next one is due as many entries later.
    assert snapshots.plan(14) == "wait"
    assert snapshots.plan(15) == "fork"
    fail[0] = False  # the next child forks from this state
    snapshots.start(15, 1)
    poll(lambda: delivered.taken(), WAIT, "the next snapshot")
    assert delivered.taken() == [(15, 1, b"fine")]
    snapshots.stop()


def test_one_child_at_a_time_until_the_loop_is_done_with_the_last(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    snapshots = BackgroundSnapshots(
        "n1", lambda: (_wait_for(gate), b"one")[1], _Delivered(), after=0, every=10
    )  # this loop never says it is done
    snapshots.start(5, 1)
    gate.touch()
    poll(lambda: snapshots.child_pid is None, WAIT, "the child to end")
    assert snapshots.busy and snapshots.plan(30) == "wait"
    snapshots.done(30, taken=True)
    assert snapshots.plan(30) == "fork"
    snapshots.stop()


def test_after_three_failed_children_in_a_row_the_next_is_taken_on_the_loop() -> None:
    snapshots, _ = _snapshots(lambda: b"", every=1)
    for applied in (1, 2, 3):
        assert snapshots.plan(applied) == "fork"
        snapshots.done(applied, taken=False)  # as the loop does for a failed child
    assert snapshots.plan(4) == "here"  # a snapshot() that raises now stops the node loudly
    snapshots.note_on_loop(0.0)  # it worked on the loop: children again
    assert snapshots.plan(4) == "fork"
    snapshots.stop()


def test_a_child_past_its_time_is_killed_and_handed_over_as_failed(tmp_path: Path) -> None:
    gate = tmp_path / "never"
    snapshots, delivered = _snapshots(lambda: (_wait_for(gate, 60), b"")[1], timeout=0.05)
    snapshots.start(3, 1)
    pid = snapshots.child_pid
    assert pid is not None
    # The loop looks at every batch while one is on its way (plan -> kill_if_overdue).
    poll(lambda: snapshots.plan(3) != "fork" and delivered.items, WAIT, "the kill")
    assert delivered.items == [(3, 1, None)] and snapshots.failed == 1
    assert _gone(pid)
    snapshots.stop()


def test_a_fork_that_fails_leaves_the_snapshot_to_the_loop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    snapshots, delivered = _snapshots(lambda: b"on the loop")

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    with caplog.at_level(logging.WARNING, logger="catga_sync.node"):
        assert snapshots.take(4, 1) == b"on the loop"
    assert "no child for a snapshot, taking it here" in caplog.text
    assert not snapshots.busy and not delivered.items
    snapshots.stop()


def test_a_killed_child_is_handed_over_as_failed(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    def snapshot() -> bytes:
        _wait_for(gate)
        return b"too late"

    snapshots, delivered = _snapshots(snapshot)
    snapshots.start(3, 1)
    pid = snapshots.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    poll(lambda: snapshots.failed == 1 and not snapshots.busy, WAIT, "the reader to notice")
    assert delivered.items == [(3, 1, None)]
    assert _gone(pid)
    snapshots.stop()


def test_stop_kills_a_child_still_encoding_and_reaps_it(tmp_path: Path) -> None:
    gate = tmp_path / "never"
    snapshots, delivered = _snapshots(lambda: (_wait_for(gate, 60), b"")[1])
    snapshots.start(3, 1)
    pid = snapshots.child_pid
    assert pid is not None
    snapshots.stop()
    assert snapshots.child_pid is None
    assert _gone(pid)
    assert not delivered.items and snapshots.failed == 0  # stopping: nothing is handed over
    snapshots.done(3, taken=False)
    assert snapshots.plan(100) == "here" and not snapshots.wanted
    snapshots.start(100, 1)  # a stopped one forks no more
    assert snapshots.child_pid is None and not snapshots.busy


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_the_child_keeps_none_of_the_parents_descriptors(tmp_path: Path) -> None:
    held = open(tmp_path / "ownership.lock", "w")  # noqa: SIM115 (as the node's flock file)
    try:

        def snapshot() -> bytes:
            return json.dumps(sorted(int(fd) for fd in os.listdir("/proc/self/fd"))).encode()

        snapshots, delivered = _snapshots(snapshot)
        snapshots.start(1, 1)
        assert delivered.event.wait(WAIT)
        body = delivered.items[0][2]
        assert body is not None
        open_in_child = json.loads(body)
        assert held.fileno() not in open_in_child
        # stdin, stdout, stderr, the pipe, and the descriptor listdir itself opened
        assert len(open_in_child) <= 5
        snapshots.stop()
    finally:
        held.close()


def test_a_slow_snapshot_on_the_loop_sends_the_next_ones_to_a_child() -> None:
    def slow() -> bytes:
        time.sleep(0.06)
        return b"slow"

    snapshots, _ = _snapshots(slow, after=0.05)
    assert not snapshots.wanted and snapshots.plan(10) == "here"
    snapshots.note_on_loop(0.01)
    assert not snapshots.wanted
    assert snapshots.take(10, 1) == b"slow"  # taken on the loop and timed: over 50 ms
    assert snapshots.wanted and snapshots.plan(20) == "fork"
    snapshots.stop()
    assert not snapshots.wanted  # a stopping node forks no more


def test_a_large_stored_snapshot_sends_the_first_one_to_a_child() -> None:
    snapshots, _ = _snapshots(lambda: b"", after=0.05)
    snapshots.note_stored(ENCODE_BYTES_PER_SECOND // 100)  # 10 ms of encoding
    assert not snapshots.wanted
    snapshots.note_stored(ENCODE_BYTES_PER_SECOND // 10)  # 100 ms
    assert snapshots.wanted
    snapshots.stop()


def test_a_childs_snapshot_of_an_index_the_log_moved_past_is_dropped() -> None:
    cluster = SimulatedCluster(3, seed=3)
    leader = cluster.wait_for_leader()
    for k in range(6):
        cluster.commit(f"c{k}".encode())
    cluster.flush()
    core = cluster.core(leader)
    index, term = core.applied_index - 2, core.term
    assert not compact_from_child(core, index, term + 1, b"other term")
    assert core.log.offset == 0
    cluster.compact(leader)  # the log was compacted past the child's index meanwhile
    assert not compact_from_child(core, index, term, b"stale")
    assert core.log.offset > index
    cluster.commit(b"more")
    cluster.flush()
    assert compact_from_child(core, core.applied_index, core.term, b"fresh")
    assert core.log.offset == core.applied_index


# -- three nodes ------------------------------------------------------------------------------


class Gated(StateMachine):
    """Values; its snapshot waits for a file while ``gate`` names one, and says which process
    encoded it."""

    name = "gated"
    gate: ClassVar[str] = ""

    def __init__(self) -> None:
        self.values: list[int] = []
        self.encoded_by = 0

    @command
    def add(self, value: int) -> int:
        self.values.append(value)
        return len(self.values)

    @query
    def all(self) -> list[int]:
        return list(self.values)

    def snapshot(self) -> Any:
        if Gated.gate:
            _wait_for(Path(Gated.gate))
        return {"values": self.values, "encoded_by": os.getpid()}


def test_the_leader_commits_while_its_child_encodes_and_restarts_from_that_snapshot(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    Gated.gate = str(gate)

    def setup(node: ClusterNode) -> None:
        node.register(Gated())

    cluster = LocalCluster(
        3,
        storage="sqlite",
        tmp_path=tmp_path,
        config={"snapshot_every": 5, "background_snapshot_after": 0},
        setup=setup,
        committed_leader=True,
    ).start()
    try:
        leader = cluster.leader()
        gated = leader.state(Gated)
        for k in range(5):
            gated.add(k)
        snapshots = leader._loop.background_snapshots  # type: ignore[union-attr]
        assert snapshots is not None
        poll(lambda: snapshots.busy, WAIT, "a child to encode the snapshot")
        child = snapshots.child_pid
        # With the snapshot taken on the loop these would wait for the gate: they commit.
        for k in range(5, 20):
            gated.add(k)
        assert snapshots.busy and snapshots.child_pid == child
        assert leader.stats.snapshots == 0
        gate.touch()
        poll(lambda: leader.stats.snapshots >= 1, WAIT, "the snapshot to be compacted in")
        k = cluster.nodes.index(leader)
        restarted = cluster.restart(k)
        # The restarted node loads the child's snapshot, then replays the entries after it.
        restored = restarted.state(Gated)
        poll(lambda: restored.local.all() == list(range(20)), WAIT, "the restored values")
        machine = restarted.state_machines.machines["gated"]
        assert isinstance(machine, Gated)
        assert machine.encoded_by not in (0, os.getpid())
    finally:
        Gated.gate = ""
        cluster.stop()


def test_a_reader_that_cannot_start_ends_its_child_and_leaves_the_snapshot_to_the_loop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    snapshots, delivered = _snapshots(lambda: b"on the loop")
    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(os, "fork", fork)
    with caplog.at_level(logging.WARNING, logger="catga_sync.node"), monkeypatch.context() as m:
        m.setattr(threading.Thread, "start", no_thread)
        data = snapshots.take(4, 1)
    assert data == b"on the loop"
    assert "cannot start the snapshot reader" in caplog.text
    assert len(forked) == 1 and _gone(forked[0])  # killed and reaped, no zombie
    assert not snapshots.busy and snapshots.child_pid is None and not delivered.items
    snapshots.stop()
