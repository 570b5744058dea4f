"""SQLite files give back the space a snapshot frees: a new file uses incremental vacuum and
shrinks after the snapshot that compacts a large log; a file from before (no auto_vacuum)
keeps its size until ``catga compact`` (VACUUM, node stopped) shrinks and converts it."""

from __future__ import annotations

import io
import logging
import sqlite3
from pathlib import Path

import pytest

from catga_sync.cli.main import main
from catga_sync.raft import Entry, HardState, Membership, Snapshot, SnapshotMeta
from catga_sync.storage import SqlStorage, open_storage
from catga_sync.storage.offline import sqlite_size

ENTRIES = 3000
PAYLOAD = 2048
MEMBERS = Membership(frozenset({"http://a:5000"}))


def _fill_then_compact(storage: SqlStorage) -> tuple[int, int]:
    """Persist a log of ENTRIES entries, then a snapshot that compacts all of it; returns the
    file's size (with its WAL) after each."""
    for first in range(1, ENTRIES + 1, 500):
        entries = [Entry(i, 1, bytes([i % 251]) * PAYLOAD) for i in range(first, first + 500)]
        storage.persist(
            hard_state=HardState(1, None, entries[-1].index),
            entries=entries,
            snapshot=None,
            snapshot_replaces_log=False,
        )
    assert storage.sqlite_path is not None
    full = sqlite_size(storage.sqlite_path)
    storage.persist(
        hard_state=None,
        entries=(),
        snapshot=Snapshot(SnapshotMeta(ENTRIES, 1, MEMBERS), b"{}"),
        snapshot_replaces_log=False,
    )
    return full, sqlite_size(storage.sqlite_path)


def _auto_vacuum(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])


def test_a_new_file_shrinks_after_a_snapshot_compacts_a_large_log(tmp_path: Path) -> None:
    storage = open_storage("a", str(tmp_path))
    assert isinstance(storage, SqlStorage)
    storage.open()
    try:
        full, compacted = _fill_then_compact(storage)
    finally:
        storage.close()
    assert full > ENTRIES * PAYLOAD  # the log is on disk: ~6 MB
    assert compacted < full / 20, (full, compacted)  # and given back after the snapshot
    assert _auto_vacuum(tmp_path / "a.sqlite3") == 2  # INCREMENTAL
    reopened = open_storage("a", str(tmp_path))
    state = reopened.open()
    reopened.close()
    assert state.snapshot is not None and state.snapshot.meta.index == ENTRIES
    assert state.entries == ()


def test_an_old_file_keeps_its_size_until_catga_compact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.sqlite3"
    with sqlite3.connect(path) as conn:  # a file created before incremental vacuum
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    storage = open_storage("a", str(tmp_path))
    assert isinstance(storage, SqlStorage)
    with caplog.at_level(logging.INFO, logger="catga_sync.storage"):
        storage.open()
    assert "created without incremental vacuum" in caplog.text and "catga compact" in caplog.text
    try:
        full, after_snapshot = _fill_then_compact(storage)
        assert after_snapshot > full / 2  # free pages inside, kept by the file
        out = io.StringIO()
        assert main(["compact", "--state", str(tmp_path)], out=out) == 1  # the node runs
        err = capsys.readouterr().err
        assert "is already running" in err and len(err.strip().splitlines()) == 1
    finally:
        storage.close()
    out = io.StringIO()
    assert main(["compact", "--state", str(tmp_path)], out=out) == 0
    before, after = (int(n) for n in out.getvalue().split(": ")[1].split(" bytes")[0].split(" -> "))
    assert out.getvalue().startswith(f"compacted {path}: ")
    assert before == after_snapshot and after < before / 20, out.getvalue()
    assert _auto_vacuum(path) == 2  # converted: from now on it shrinks by itself
    reopened = open_storage("a", str(tmp_path))
    state = reopened.open()
    reopened.close()
    assert state.snapshot is not None and state.snapshot.meta.index == ENTRIES


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--state", "/nonexistent/dir"), "no such directory"),
        (("--state", "postgresql+psycopg://u:p@h/db", "--node-id", "a"), "is not SQLite"),
        (("--state", "{tmp}", "--node-id", "ghost"), "has no state file"),
        (("--state", "{tmp}"), "no *.sqlite3 state file"),
    ],
)
def test_compact_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str
) -> None:
    argv = ["compact", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    assert main(argv, out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
