"""Crashes: kill -9 in the middle of a stream of writes, and a damaged SQLite file.

A writer process persists batches in a loop, as a node's driver would: entries (sometimes
overwriting a suffix in a new term, sometimes with a snapshot that compacts the log) together
with a hard state whose term is the last entry's and whose commit is the last index. We kill it
with SIGKILL at an arbitrary moment after it reported progress, reopen, and check that every
batch is either wholly there or wholly absent: the log is consecutive after its snapshot, every
entry's data is exactly what was written for its index and term, and the hard state matches the
log. Then a new writer continues from what survived, and we kill it again.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catga_sync.errors import StorageError
from catga_sync.raft import Entry, HardState, PersistedState
from catga_sync.storage import open_storage

from .conftest import Backend, child_env

WRITER_SCRIPT = """
import hashlib, os, random, sys
from catga_sync.raft import Entry, HardState, Membership, Snapshot, SnapshotMeta
from catga_sync.storage import open_storage

def data(index, term):
    return hashlib.sha256(f"{index}/{term}".encode()).digest() * (1 + index % 64)

node_id, state, prefix = sys.argv[1:4]
storage = open_storage(node_id, state, table_prefix=prefix)
stored = storage.open()
offset = stored.snapshot.meta.index if stored.snapshot else 0
last = stored.entries[-1].index if stored.entries else offset
term = max(stored.hard_state.term, 1)
rng = random.Random(os.getpid())
members = Membership(frozenset({"http://127.0.0.1:5000"}))
batches = 0
while True:
    first = last + 1
    snapshot = None
    roll = rng.random()
    if roll < 0.15 and last - offset > 6:
        term += 1  # a new leader overwrites a suffix of the log
        first = last - rng.randint(1, 5)
    elif roll < 0.25 and last - offset > 20:
        offset = last - 10  # the application compacts the log
        meta = SnapshotMeta(offset, term, members)
        snapshot = Snapshot(meta, hashlib.sha256(f"snapshot {offset}".encode()).digest() * 512)
    count = rng.randint(1, 60)
    entries = [Entry(i, term, data(i, term)) for i in range(first, first + count)]
    last = entries[-1].index
    storage.persist(
        hard_state=HardState(term, None, last),
        entries=entries,
        snapshot=snapshot,
        snapshot_replaces_log=False,
    )
    batches += 1
    print(batches, term, last, flush=True)
"""


def expected_data(index: int, term: int) -> bytes:
    return hashlib.sha256(f"{index}/{term}".encode()).digest() * (1 + index % 64)


def check_intact(state: PersistedState) -> None:
    """Every batch the writer persisted is either wholly stored or wholly absent."""
    offset = state.snapshot.meta.index if state.snapshot else 0
    if state.snapshot is not None:
        assert state.snapshot.data == hashlib.sha256(f"snapshot {offset}".encode()).digest() * 512
    indexes = [e.index for e in state.entries]
    assert indexes == list(range(offset + 1, offset + 1 + len(indexes))), "log not consecutive"
    for entry in state.entries:
        assert entry.data == expected_data(entry.index, entry.term), f"entry {entry.index} torn"
    terms = [e.term for e in state.entries]
    assert terms == sorted(terms), "terms go backwards: an overwrite was half applied"
    last = indexes[-1] if indexes else offset
    assert state.hard_state.commit <= last
    if state.entries:
        # Each batch wrote its entries and this hard state in one transaction.
        assert state.hard_state.commit == last
        assert state.hard_state.term == state.entries[-1].term


def run_writer_and_kill(backend: Backend, rng: random.Random) -> tuple[int, int]:
    """Start a writer, let it report some batches, SIGKILL it; return the (term, last index)
    of the last batch it reported as persisted."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, "node0", str(backend.state), backend.prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    backend.children.append(proc)
    assert proc.stdout is not None
    target = rng.randint(3, 15)
    reported, term, last = 0, 0, 0
    while reported < target:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate()
            raise AssertionError(f"the writer stopped on its own: {err}")
        reported, term, last = map(int, line.split())
    # The writer is already writing its next batches. Killing it right after reading a line
    # would land at the same point of its loop every time; a random pause spreads the kills
    # over the whole loop (it waits for nothing).
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return term, last


def test_kill_9_during_writes_never_leaves_a_torn_or_half_visible_batch(
    sql_backend: Backend,
) -> None:
    rng = random.Random(7)
    for _round in range(10):
        reported_term, reported_last = run_writer_and_kill(sql_backend, rng)
        storage, state = sql_backend.open_when_free()
        check_intact(state)
        # A batch the writer saw persisted is never lost (later batches may follow it).
        last = state.entries[-1].index if state.entries else 0
        assert (state.hard_state.term, last) >= (reported_term, reported_last)
        storage.close()


COMMIT_WRITER_SCRIPT = """
import sys
from catga_sync.raft import Entry, HardState
from catga_sync.storage import open_storage

node_id, state, prefix = sys.argv[1:4]
storage = open_storage(node_id, state, table_prefix=prefix)
storage.open()
storage.persist(
    hard_state=HardState(1, None, 0),
    entries=[Entry(i, 1, b"x") for i in range(1, 10001)],
    snapshot=None,
    snapshot_replaces_log=False,
)
for commit in range(1, 10001):  # what a follower's commit notices ask for: the index alone
    storage.persist(
        hard_state=HardState(1, None, commit),
        entries=(),
        snapshot=None,
        snapshot_replaces_log=False,
        sync=False,
    )
    print(commit, flush=True)
"""


def test_an_unsynced_commit_index_survives_kill_9_of_the_writer(sql_backend: Backend) -> None:
    """The contract of ``persist(sync=False)``: no fsync, yet a crash of the process (not of
    the machine) keeps every write it returned from."""
    rng = random.Random(11)
    prefix = sql_backend.prefix
    proc = subprocess.Popen(
        [sys.executable, "-c", COMMIT_WRITER_SCRIPT, "node0", str(sql_backend.state), prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    sql_backend.children.append(proc)
    assert proc.stdout is not None
    reported = 0
    while reported < 50:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate()
            raise AssertionError(f"the writer stopped on its own: {err}")
        reported = int(line)
    time.sleep(rng.uniform(0, 0.02))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    storage, state = sql_backend.open_when_free()
    try:
        assert state.hard_state.commit >= reported
        assert len(state.entries) == 10000
    finally:
        storage.close()


# --------------------------------------------------------------------------------------------
# A damaged SQLite file


def assert_recovery_steps(message: str, file: Path) -> None:
    assert f"node 'node0' in {file} is damaged" in message
    assert "Stop all nodes" in message
    assert "Back up the state directories" in message
    assert f"rm {file} {file}-wal {file}-shm" in message
    assert "it rejoins and syncs its log from the leader" in message
    assert "restore all of them from the backup" in message


def test_a_file_that_is_not_a_database_names_the_file_and_the_recovery(tmp_path: Path) -> None:
    state = tmp_path / "raft-state"
    state.mkdir()
    file = state / "node0.sqlite3"
    file.write_bytes(b"this is not a SQLite database\n" * 200)
    with pytest.raises(StorageError) as caught:
        open_storage("node0", state).open()
    assert_recovery_steps(str(caught.value), file)
    assert "file is not a database" in str(caught.value)
    # Following the steps works: the failed open released the lock, and a new file starts empty.
    file.unlink()
    storage = open_storage("node0", state)
    assert storage.open() == PersistedState(HardState(), None, ())
    storage.close()


def test_a_malformed_database_names_the_file_and_the_recovery(tmp_path: Path) -> None:
    state = tmp_path / "raft-state"
    storage = open_storage("node0", state)
    storage.open()
    entries = [Entry(i, 1, expected_data(i, 1)) for i in range(1, 1001)]
    storage.persist(
        hard_state=HardState(1, None, 1000),
        entries=entries,
        snapshot=None,
        snapshot_replaces_log=False,
    )
    storage.close()
    file = state / "node0.sqlite3"
    with sqlite3.connect(file) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    # Keep the header and the schema page; scribble over the tables' pages.
    with file.open("r+b") as raw:
        size = raw.seek(0, 2)
        raw.seek(2 * page_size)
        raw.write(random.Random(3).randbytes(size - 2 * page_size))
    with pytest.raises(StorageError) as caught:
        open_storage("node0", state).open()
    assert_recovery_steps(str(caught.value), file)
    assert "malformed" in str(caught.value)
