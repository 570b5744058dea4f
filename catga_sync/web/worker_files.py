"""The files beside a node's state through which the workers of one host find each other.

The *worker lock* (``<node_id>.workers.lock``, an ``flock``) says which worker hosts the node;
the *workers file* (``<node_id>.workers.json``, mode 0600) says where the hosting worker serves
the node's routes on loopback, and the token its siblings must send (:mod:`.workers`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from ..errors import StorageError
from ..transport.wire import HEADER_WORKER_TOKEN

if TYPE_CHECKING:
    from ..node import ClusterNode

__all__ = [
    "NO_HOST",
    "RETRY",
    "WORKER_TOKEN_HEADER",
    "HostInfo",
    "lock_holder",
    "parent_of",
    "worker_paths",
]

WORKER_TOKEN_HEADER = HEADER_WORKER_TOKEN
RETRY = 0.1
"""Seconds between a client's looks at the workers file while no host answers."""


def worker_paths(node: ClusterNode) -> tuple[Path, Path]:
    """The worker lock and the workers file of ``node``: beside its SQLite state, else in the
    temporary directory under a name derived from the node and its storage."""
    config = node.config
    path = config.persistent_state_path
    directory: Path | None = None
    if path is not None and "://" not in str(path):
        directory = Path(path).expanduser().resolve()
    elif path is not None and str(path).startswith("sqlite"):
        database = make_url(str(path)).database
        if database and database != ":memory:":
            directory = Path(database).expanduser().resolve().parent
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        stem = directory / f"{node.node_id}.workers"
    else:
        key = hashlib.sha256(f"{node.raft_id}|{node.node_id}|{path}".encode()).hexdigest()[:16]
        stem = _private_directory() / f"catga-sync-{key}.workers"
    return stem.with_name(f"{stem.name}.lock"), stem.with_name(f"{stem.name}.json")


def _private_directory() -> Path:
    """``$TMPDIR/catga-sync-<uid>``, mode 0700 and ours: no other user may place a lock there
    (the temporary directory itself is everyone's)."""
    directory = Path(tempfile.gettempdir()) / f"catga-sync-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise StorageError(
            f"{directory} must be a directory of this user's with mode 0700 (it holds the "
            "worker locks of nodes whose state is on a database server); remove it"
        )
    return directory


def lock_holder(path: Path) -> int | None:
    """The pid holding the ``flock`` on ``path`` (from ``/proc/locks``), None when nobody does.

    Asked of the kernel rather than of the workers file: the file outlives its writer (an
    unclean stop), and a pid it names may belong to another process since."""
    try:
        info = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                return int(fields[4])
        except ValueError:
            continue
    return None


def parent_of(pid: int) -> int | None:
    """``pid``'s parent process (None when it is gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat_line.rsplit(")", 1)[1].split()[1])


@dataclass(frozen=True)
class HostInfo:
    """What the hosting worker publishes in the workers file."""

    pid: int
    ppid: int
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def current(cls, path: Path, lock: Path) -> HostInfo | None:
        """The workers file, if the worker it names holds the worker lock now and serves."""
        info = cls.read(path)
        if info is None or info.port <= 0 or lock_holder(lock) != info.pid:
            return None
        return info

    @classmethod
    def read(cls, path: Path) -> HostInfo | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(int(raw["pid"]), int(raw["ppid"]), int(raw["port"]), str(raw["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        body = json.dumps(
            {"pid": self.pid, "ppid": self.ppid, "port": self.port, "token": self.token}
        )
        tmp = path.with_name(f"{path.name}.{self.pid}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # readers see the old file or the new one, never half of it


NO_HOST = HostInfo(0, 0, 0, "")
"""What a client worker's relay target is while no worker hosts its node (answer 503)."""
