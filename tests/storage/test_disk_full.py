"""A disk that fills under a running node: the node stops, loudly, naming the file and the fix.

A failed write or fsync is never retried into a node that goes on (PostgreSQL's "fsyncgate":
after a failed fsync the kernel may have dropped the dirty pages, so a retry that succeeds
proves nothing). The file system is a real one: a 256 KiB tmpfs mounted for the test, which
needs root (CI runs as root; elsewhere the test is skipped, saying why).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from catga_sync import ClusterConfig, ClusterNode, ReplicatedDict
from catga_sync.errors import CatgaError, NodeNotRunningError
from catga_sync.raft import Role
from catga_sync.storage import open_storage


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_node_naming_the_file_and_nothing_is_retried(
    tiny_disk: Path,
) -> None:
    state = tiny_disk / "state"
    config = ClusterConfig(
        local_node_endpoint="http://127.0.0.1:7998",
        node_id="full",
        persistent_state_path=str(state),
    )
    node = ClusterNode(config, serve_http=False)
    node.register(ReplicatedDict())
    node.start()
    try:
        node.wait_for(lambda s: s.is_leader and s.commit_term == s.term, 10)
        kv = node.state(ReplicatedDict, timeout=10)
        written = 0
        with pytest.raises(CatgaError) as caught:
            for written in range(1000):  # ~4 KB each: the 256 KiB disk fills within 64
                kv.set(f"k{written}", "x" * 4000)
        message = str(caught.value)
        assert f"{state / 'full.sqlite3'}" in message
        assert "database or disk is full" in message
        assert "has free space, then restart the node" in message
        assert 0 < written < 64
        # Stopped, not retrying: not running, leading nothing, and a new command is refused
        # at once instead of waiting out its timeout.
        assert not node.running
        status = node.status
        assert (status.running, status.role, status.leader_endpoint) == (False, Role.FOLLOWER, None)
        with pytest.raises(NodeNotRunningError, match="database or disk is full"):
            node.state(ReplicatedDict, timeout=30).set("again", 1)
        applied = status.last_applied
    finally:
        node.stop()
    # What is on disk is whole: every write that returned, nothing torn. Opening writes (the
    # owner row), so first make room, as the operator would before a restart.
    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_disk)], check=True)
    storage = open_storage("full", str(state))
    try:
        stored = storage.open()
        last = stored.entries[-1].index if stored.entries else 0
        assert stored.hard_state.commit <= last
        # Every entry applied is on disk: entries are fsynced before they are applied. The
        # commit index is written once per batch, after it (Raft keeps it volatile), so it may
        # lag by the batch the disk filled in.
        assert applied <= last
    finally:
        storage.close()
