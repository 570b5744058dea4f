"""One storage factory per backend, so the same tests run against each.

``memory`` and ``sqlite`` (a real file under ``tmp_path``) always run. ``postgres`` and ``mysql``
run against real servers found through ``CATGA_TEST_POSTGRES_URL`` and ``CATGA_TEST_MYSQL_URL``
(``tox -e postgres`` / ``tox -e mysql`` set them) and are skipped, saying so, when unset. Every
test gets its own table prefix and drops its tables afterwards, so runs in parallel never meet.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from catga_sync.errors import StorageError
from catga_sync.raft import PersistedState
from catga_sync.storage import MemoryStorage, Storage, build_tables, open_storage
from catga_sync.storage.ownership import mysql_lock_name, postgres_lock_key

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVERS = {
    # backend: (environment variable, example URL, driver module, setup.py extra)
    "postgres": (
        "CATGA_TEST_POSTGRES_URL",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "psycopg",
        "postgres",
    ),
    "mysql": (
        "CATGA_TEST_MYSQL_URL",
        "mysql+pymysql://root@127.0.0.1:3306/test",
        "pymysql",
        "mysql",
    ),
}

HOLDER_SCRIPT = """
import os, sys
from catga_sync.storage import open_storage
node_id, state, prefix = sys.argv[1:4]
storage = open_storage(node_id, None if state == "-" else state, table_prefix=prefix)
storage.open()
print("open", os.getpid(), flush=True)
sys.stdin.read()
storage.close()
print("closed", flush=True)
"""
"""A process that opens a node's storage, says so, and holds it until its stdin closes."""


def child_env() -> dict[str, str]:
    """The environment for child processes: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class Backend:
    """Makes storages of one kind for the current test, and cleans up after it."""

    name: str
    state: str | None
    """The ``persistent_state_path`` handed to :func:`open_storage`."""
    prefix: str
    made: list[Storage] = field(default_factory=list)
    memory: dict[str, MemoryStorage] = field(default_factory=dict)
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def is_sql(self) -> bool:
        return self.name != "memory"

    def make(self, node_id: str = "node0") -> Storage:
        """A new (unopened) storage for ``node_id``; for memory, the node's one storage."""
        if self.state is None:
            return self.memory.setdefault(node_id, MemoryStorage(node_id))
        storage = open_storage(node_id, self.state, table_prefix=self.prefix)
        self.made.append(storage)
        return storage

    def reopen(self, storage: Storage, node_id: str = "node0") -> PersistedState:
        """Close ``storage`` and load the node's state through a new storage object."""
        storage.close()
        return self.make(node_id).open()

    def open_when_free(
        self, node_id: str = "node0", timeout: float = 15.0
    ) -> tuple[Storage, PersistedState]:
        """Open the node's storage once no other process holds it (a killed holder's database
        session ends when the server notices, on its own time)."""
        deadline = time.monotonic() + timeout
        while True:
            storage = self.make(node_id)
            try:
                return storage, storage.open()
            except StorageError as exc:
                if "already running" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def spawn_holder(self, node_id: str = "node0") -> tuple[subprocess.Popen[str], int]:
        """Start a process that holds the node's storage open; return it and its pid."""
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, node_id, self.state or "-", self.prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.children.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("open "):
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the holder process did not open the storage: {err}")
        return proc, int(line.split()[1])

    def url_for(self, node_id: str) -> str:
        """The SQLAlchemy URL of the database that holds ``node_id``'s state."""
        assert self.state is not None
        if "://" in self.state:
            return self.state
        return f"sqlite:///{Path(self.state).resolve() / f'{node_id}.sqlite3'}"

    @contextmanager
    def connect(self, node_id: str = "node0") -> Iterator[Connection]:
        """A transaction on the node's database, to look at or tamper with its rows."""
        engine = create_engine(self.url_for(node_id))
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            engine.dispose()

    def break_lock(self, node_id: str = "node0") -> None:
        """Take the ownership lock away from whoever holds it, as an operator might by mistake:
        delete the lock file, or end the database session that holds the lock."""
        if self.name == "sqlite":
            assert self.state is not None
            (Path(self.state) / f"{node_id}.sqlite3.lock").unlink()
        elif self.name == "postgres":
            key = postgres_lock_key(self.prefix, node_id) % (1 << 64)
            with self.connect(node_id) as conn:
                killed = conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                        "AND classid::bigint = :hi AND objid::bigint = :lo"
                    ),
                    {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
                ).all()
            assert killed, "no session held the advisory lock"
        elif self.name == "mysql":
            with self.connect(node_id) as conn:
                database = conn.execute(text("SELECT DATABASE()")).scalar()
                name = mysql_lock_name(str(database), self.prefix, node_id)
                holder = conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar()
                assert holder is not None, "no session held the named lock"
                conn.execute(text(f"KILL {int(holder)}"))
        else:
            raise AssertionError(f"{self.name} has no lock to break")

    def cleanup(self) -> None:
        try:
            for proc in self.children:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            for storage in [*self.made, *self.memory.values()]:
                storage.close()
        finally:
            self._drop_tables()

    def _drop_tables(self) -> None:
        if self.state is not None and "://" in self.state:
            engine = create_engine(self.state)
            try:
                build_tables(self.prefix).metadata.drop_all(engine)
            finally:
                engine.dispose()


def server_url(name: str) -> str:
    """The test server's URL from the environment, or skip the test saying how to get one."""
    variable, example, driver, extra = SERVERS[name]
    url = os.environ.get(variable)
    if not url:
        pytest.skip(
            f"{variable} is not set: run `tox -e {name}`, or set it to a test database, "
            f"e.g. {variable}={example}"
        )
    if importlib.util.find_spec(driver) is None:
        pytest.skip(f"{driver} is not installed: pip install -e '.[test,{extra}]'")
    return url


def make_backend(name: str, tmp_path: Path) -> Backend:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    if name == "memory":
        return Backend(name, None, prefix)
    if name == "sqlite":
        return Backend(name, str(tmp_path / "raft-state"), prefix)
    return Backend(name, server_url(name), prefix)


@pytest.fixture(params=["memory", "sqlite", "postgres", "mysql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every storage backend."""
    made = make_backend(request.param, tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backends that keep state outside the process (and so can lock and be damaged)."""
    made = make_backend(request.param, tmp_path)
    try:
        yield made
    finally:
        made.cleanup()
