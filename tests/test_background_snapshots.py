"""Snapshots taken in a forked child (runtime/snapshots.py): real forks, real pipes, real
signals; then three nodes whose leader keeps committing while its child encodes."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import LocalCluster, poll

from catga_sync.fsm import StateMachine, command, query
from catga_sync.node import ClusterNode
from catga_sync.runtime.snapshots import BackgroundSnapshots

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

WAIT = 10.0


def _wait_for(path: Path, seconds: float = 20.0) -> None:
    """In a child: wait until the test creates ``path`` (a gate no lock can stand in for)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


class _Delivered:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, bytes]] = []
        self.event = threading.Event()

    def __call__(self, index: int, term: int, data: bytes) -> None:
        self.items.append((index, term, data))
        self.event.set()


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

    delivered = _Delivered()
    snapshots = BackgroundSnapshots("n1", snapshot, delivered, after=0)
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
    delivered = _Delivered()
    snapshots = BackgroundSnapshots("n1", lambda: blob, delivered, after=0)
    snapshots.start(1, 1)
    assert delivered.event.wait(WAIT)
    assert delivered.items[0][2] == blob
    snapshots.stop()


def test_a_failing_child_costs_only_that_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    fail = [True]

    def snapshot() -> bytes:
        if fail[0]:
            raise RuntimeError("cannot encode")
        return b"fine"

    delivered = _Delivered()
    snapshots = BackgroundSnapshots("n1", snapshot, delivered, after=0)
    with caplog.at_level(logging.WARNING, logger="catga_sync.node"):
        snapshots.start(5, 1)
        poll(lambda: snapshots.failed == 1 and not snapshots.busy, WAIT, "the failure")
    assert not delivered.items
    assert "background snapshot at index 5 was not taken" in caplog.text
    assert "exited with status 1" in caplog.text or "ended before writing" in caplog.text
    fail[0] = False  # the next child forks from this state
    snapshots.start(6, 1)
    assert delivered.event.wait(WAIT)
    assert delivered.items == [(6, 1, b"fine")]
    snapshots.stop()


def test_a_killed_child_is_not_delivered(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    def snapshot() -> bytes:
        _wait_for(gate)
        return b"too late"

    delivered = _Delivered()
    snapshots = BackgroundSnapshots("n1", snapshot, delivered, after=0)
    snapshots.start(3, 1)
    pid = snapshots.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    poll(lambda: snapshots.failed == 1 and not snapshots.busy, WAIT, "the reader to notice")
    assert not delivered.items
    assert _gone(pid)
    snapshots.stop()


def test_stop_kills_a_child_still_encoding_and_reaps_it(tmp_path: Path) -> None:
    gate = tmp_path / "never"
    delivered = _Delivered()
    snapshots = BackgroundSnapshots("n1", lambda: (_wait_for(gate, 60), b"")[1], delivered, after=0)
    snapshots.start(3, 1)
    pid = snapshots.child_pid
    assert pid is not None
    snapshots.stop()
    assert not snapshots.busy
    assert _gone(pid)
    assert not delivered.items and snapshots.failed == 0  # stopping is no failure
    snapshots.start(4, 1)  # a stopped one forks no more
    assert snapshots.child_pid is None


def test_the_child_keeps_none_of_the_parents_descriptors(tmp_path: Path) -> None:
    held = open(tmp_path / "ownership.lock", "w")  # noqa: SIM115 (as the node's flock file)
    try:

        def snapshot() -> bytes:
            return json.dumps(sorted(int(fd) for fd in os.listdir("/proc/self/fd"))).encode()

        delivered = _Delivered()
        snapshots = BackgroundSnapshots("n1", snapshot, delivered, after=0)
        snapshots.start(1, 1)
        assert delivered.event.wait(WAIT)
        open_in_child = json.loads(delivered.items[0][2])
        assert held.fileno() not in open_in_child
        # stdin, stdout, stderr, the pipe, and the descriptor listdir itself opened
        assert len(open_in_child) <= 5
        snapshots.stop()
    finally:
        held.close()


def test_a_slow_snapshot_on_the_loop_sends_the_next_ones_to_a_child() -> None:
    snapshots = BackgroundSnapshots("n1", lambda: b"", _Delivered(), after=0.05)
    assert not snapshots.wanted
    snapshots.note_on_loop(0.01)
    assert not snapshots.wanted
    snapshots.note_on_loop(0.05)
    assert snapshots.wanted
    snapshots.stop()
    assert not snapshots.wanted  # a stopping node forks no more


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
