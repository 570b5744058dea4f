"""``open_storage``: from the guide's ``PersistentStatePath`` to a storage; SQLite's settings."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from catga_sync.errors import ConfigError, StorageError
from catga_sync.raft import Entry, HardState
from catga_sync.storage import MemoryStorage, SqlStorage, open_storage


def test_no_path_means_memory() -> None:
    assert isinstance(open_storage("node0", None), MemoryStorage)


def test_a_directory_means_one_sqlite_file_per_node_created_at_open(tmp_path: Path) -> None:
    state = tmp_path / "raft-state" / "nested"
    storages = [open_storage(f"node{k}", state) for k in range(2)]
    assert not state.exists()  # nothing happens before open()
    for k, storage in enumerate(storages):
        assert isinstance(storage, SqlStorage)
        assert storage.describe() == str((state / f"node{k}.sqlite3").resolve())
        storage.open()
    assert sorted(p.name for p in state.iterdir()) == [
        "node0.sqlite3",
        "node0.sqlite3-shm",
        "node0.sqlite3-wal",
        "node0.sqlite3.lock",
        "node1.sqlite3",
        "node1.sqlite3-shm",
        "node1.sqlite3-wal",
        "node1.sqlite3.lock",
    ]
    for storage in storages:
        storage.close()


def test_a_path_object_and_a_relative_path_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("node0", Path("./raft-state"))
    assert storage.describe() == str(tmp_path / "raft-state" / "node0.sqlite3")


def test_a_url_means_that_database() -> None:
    storage = open_storage("node0", "postgresql+psycopg://app:s3cret@db.internal:5432/app")
    assert isinstance(storage, SqlStorage)
    assert storage.describe() == "postgresql+psycopg://app:***@db.internal:5432/app"
    assert "s3cret" not in storage.describe()


def test_the_lock_file_holds_the_holder(tmp_path: Path) -> None:
    storage = open_storage("node0", tmp_path)
    storage.open()
    record = json.loads((tmp_path / "node0.sqlite3.lock").read_text())
    assert record["pid"] == os.getpid()
    assert record["node_id"] == "node0"
    assert {"host", "started"} <= set(record)
    storage.close()


def test_nodes_sharing_one_sqlite_file_through_a_url_each_take_their_own_lock(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = open_storage("node1", url), open_storage("node2", url)
    one.open()
    two.open()
    one.persist(
        hard_state=HardState(1, None, 0),
        entries=[Entry(1, 1, b"a")],
        snapshot=None,
        snapshot_replaces_log=False,
    )
    two.persist(
        hard_state=HardState(2, None, 0),
        entries=[Entry(1, 2, b"b")],
        snapshot=None,
        snapshot_replaces_log=False,
    )
    assert (tmp_path / "shared.db.node1.lock").exists()
    with pytest.raises(StorageError, match="already running"):
        open_storage("node1", url).open()
    one.close()
    two.close()
    for storage in (one, two):
        state = storage.open()
        storage.close()
        assert state.entries[0].data == (b"a" if storage is one else b"b")


@pytest.mark.parametrize(("configured", "expected"), [("FULL", 2), ("normal", 1)])
def test_sqlite_runs_in_wal_mode_with_the_chosen_synchronous_level(
    tmp_path: Path, configured: str, expected: int
) -> None:
    storage = open_storage("node0", tmp_path, sqlite_synchronous=configured)
    storage.open()
    assert isinstance(storage, SqlStorage)
    # The connection the storage writes on, looked at from inside.
    conn = storage._sqlite_connection
    assert conn is not None
    assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert conn.execute(text("PRAGMA synchronous")).scalar() == expected
    assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    conn.rollback()  # end the transaction those reads began
    storage.close()
    with sqlite3.connect(tmp_path / "node0.sqlite3") as db:  # WAL is a property of the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("path", "kwargs", "match"),
    [
        ("", {}, "persistent_state_path is empty"),
        ("sqlite://", {}, "names no SQLite file"),
        ("sqlite:///:memory:", {}, "names no SQLite file"),
        ("oracle://scott:tiger@db/orcl", {}, "supports sqlite:///, postgresql"),
        ("not a url://", {}, "is not a valid SQLAlchemy URL"),
        ("postgresql+psycopg://u:s3cret@h:port/db", {}, r"u:\*\*\*@h:port.* is not a valid"),
        ("{dir}", {"table_prefix": "catga-"}, "table prefix 'catga-'"),
        ("{dir}", {"table_prefix": "x" * 33}, "longer than 32"),
        ("{dir}", {"table_prefix": "Catga_"}, "lowercase"),
        ("{dir}", {"sqlite_synchronous": "OFF"}, "sqlite_synchronous must be 'FULL'"),
        ("{file}", {}, "is a file, not a directory"),
    ],
)
def test_unusable_settings_are_config_errors_naming_the_fix(
    tmp_path: Path, path: str, kwargs: dict[str, str], match: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    value = path.format(dir=tmp_path, file=tmp_path / "a-file")
    with pytest.raises(ConfigError, match=match):
        open_storage("node0", value, **kwargs)


@pytest.mark.parametrize("node_id", ["", "a/b", "../up", ".hidden", "x" * 256, "tab\there"])
def test_node_ids_that_cannot_name_a_state_file_are_refused(tmp_path: Path, node_id: str) -> None:
    with pytest.raises(ConfigError, match="node_id"):
        open_storage(node_id, tmp_path)


def test_an_unwritable_state_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    storage = SqlStorage("node0", f"sqlite:///{blocker / 'sub' / 'node0.sqlite3'}")
    with pytest.raises(StorageError, match="cannot create the state directory"):
        storage.open()
