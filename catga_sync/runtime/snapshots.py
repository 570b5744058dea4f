"""Snapshots taken in a forked child, so that encoding a large state does not stop the Raft
loop (Redis's ``BGSAVE``).

Encoding the state machines is the loop's longest pause: a million orders are about 2 s of
``json.dumps``, ten election timeouts at the guide's timings, in which the node neither
heartbeats nor answers. Once one snapshot took longer than ``after`` seconds on the loop, the
next ones are taken like this instead:

1. **Fork**, on the loop, between two batches: every applied entry is in the state machines,
   and the child's copy-on-write memory keeps them as of that index, whatever the parent
   applies next. Forking costs the copy of the page tables, milliseconds where the encoding
   costs seconds.
2. **Encode**, in the child: it closes every descriptor it inherited but the pipe (a child
   must not keep the node's ownership ``flock``, its listening socket or its database
   connections alive after the parent dies), runs ``snapshot()``, writes the length and the
   bytes to the pipe and exits with ``os._exit``: no ``atexit``, no destructors, none of the
   parent's threads (a forked child has only the forking one).
3. **Compact**, on the loop: a thread of the parent reads the bytes and hands them to
   ``deliver(index, term, data)``, which the loop runs between batches.

One child at a time. A child that fails, is killed, or runs past ``timeout`` costs only that
snapshot (a warning; the log is compacted by a later one); it never stops the node. Where
``os.fork`` is missing, or a fork fails, snapshots stay on the loop.

While the child runs, every page the parent writes is copied once: at worst the state's memory
twice over, for the seconds the encoding takes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BackgroundSnapshots", "fork_available"]

log = logging.getLogger("catga_sync.node")

STOP_POLL_SECONDS = 0.1
"""How often the reader looks whether the node stops, while its child encodes."""
_LENGTH_BYTES = 8
_READ_BYTES = 1 << 20


def fork_available() -> bool:
    return hasattr(os, "fork") and hasattr(os, "pipe")


@dataclass
class _Child:
    pid: int
    fd: int
    index: int
    term: int
    started: float


class BackgroundSnapshots:
    """Takes node ``node_id``'s snapshots (``snapshot()``) in a forked child and hands each to
    ``deliver(index, term, data)`` from a reader thread; see the module docstring.

    ``after``: a snapshot on the loop that took at least this many seconds makes the next ones
    background ones (0: every one). Only the Raft loop's thread calls :meth:`start` and
    :meth:`note_on_loop`; :meth:`stop` may come from any thread.
    """

    def __init__(
        self,
        node_id: str,
        snapshot: Callable[[], bytes],
        deliver: Callable[[int, int, bytes], None],
        *,
        after: float,
        timeout: float = 600.0,
    ) -> None:
        self.node_id = node_id
        self._snapshot = snapshot
        self._deliver = deliver
        self._after = after
        self._timeout = timeout
        self._wanted = after <= 0
        self._child: _Child | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.taken = 0
        """Snapshots a child encoded and handed over."""
        self.failed = 0
        """Children that failed, were killed, or ran out of time."""

    @property
    def wanted(self) -> bool:
        """The next snapshot is to be taken in a child."""
        return self._wanted and not self._stopping.is_set()

    @property
    def busy(self) -> bool:
        """A child is encoding a snapshot (no other starts meanwhile)."""
        return self._child is not None

    @property
    def child_pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None else None

    def note_on_loop(self, seconds: float) -> None:
        """A snapshot took ``seconds`` on the loop: past ``after``, the next go to a child."""
        if seconds >= self._after:
            if not self._wanted:
                log.info(
                    "node %s: a snapshot took %.0f ms on the Raft loop; from now on snapshots "
                    "are taken in a forked child",
                    self.node_id,
                    seconds * 1000,
                )
            self._wanted = True

    def start(self, index: int, term: int) -> None:
        """Fork a child that snapshots the state as of ``index`` (of ``term``), now applied.
        Raises ``OSError`` when the fork fails (the caller takes the snapshot itself)."""
        with self._lock:
            if self._child is not None or self._stopping.is_set():
                return
            read_fd, write_fd = os.pipe()
            try:
                with warnings.catch_warnings():
                    # Python 3.12+ warns that a forked child of a threaded process may deadlock
                    # on a lock another thread held; this child only encodes and exits.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
            except BaseException:
                os.close(read_fd)
                os.close(write_fd)
                raise
            if pid == 0:  # the child: never returns
                self._encode_in_child(read_fd, write_fd)
            os.close(write_fd)
            self._child = _Child(pid, read_fd, index, term, time.monotonic())
            self._reader = threading.Thread(
                target=self._read, name=f"catga-snapshot-{self.node_id}", daemon=True
            )
            self._reader.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Have the reader kill a child still encoding, and wait for it. Idempotent. (Only the
        reader signals and reaps its child: a pid it reaped may already be another process's.)"""
        self._stopping.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)

    # -- the child ------------------------------------------------------------------------------

    def _encode_in_child(self, read_fd: int, write_fd: int) -> None:
        code = 1
        try:
            os.close(read_fd)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, _max_fd())
            data = self._snapshot()
            _write_all(write_fd, len(data).to_bytes(_LENGTH_BYTES, "big"))
            _write_all(write_fd, data)
            code = 0
        except BaseException as exc:  # said on the stderr it shares with the parent
            with contextlib.suppress(OSError):
                os.write(2, f"catga_sync: background snapshot failed: {exc!r}\n".encode())
        finally:
            os._exit(code)

    # -- the parent's reader thread -------------------------------------------------------------

    def _read(self) -> None:
        child = self._child
        assert child is not None
        data: bytes | None = None
        why = ""
        try:
            data, why = self._receive(child)
        except OSError as exc:
            why = f"reading it failed: {exc}"
        finally:
            os.close(child.fd)
            status = _reap(child.pid, kill=data is None)
            if data is not None and status not in (0, None):
                data, why = None, f"the child exited with status {status}"
            with self._lock:
                self._child = None
        if data is None:
            if not self._stopping.is_set():
                self.failed += 1
                log.warning(
                    "node %s: the background snapshot at index %d was not taken (%s); the log "
                    "is compacted by a later one",
                    self.node_id,
                    child.index,
                    why,
                )
            return
        self.taken += 1
        self._deliver(child.index, child.term, data)

    def _receive(self, child: _Child) -> tuple[bytes | None, str]:
        """The child's bytes, or None and why not."""
        deadline = child.started + self._timeout
        header = self._read_exactly(child, _LENGTH_BYTES, deadline)
        if header is None:
            return None, "the child ended before writing it"
        size = int.from_bytes(header, "big")
        body = self._read_exactly(child, size, deadline)
        if body is None:
            return None, f"the child ended after writing part of {size} bytes"
        return body, ""

    def _read_exactly(self, child: _Child, size: int, deadline: float) -> bytes | None:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            if self._stopping.is_set():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(f"the child took longer than {self._timeout:.0f} s")
            readable, _, _ = select.select([child.fd], [], [], min(left, STOP_POLL_SECONDS))
            if not readable:
                continue
            chunk = os.readv(child.fd, [view[got : got + _READ_BYTES]])
            if chunk == 0:
                return None
            got += chunk
        return bytes(buffer)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int, *, kill: bool) -> int | None:
    """Wait for the child (killing it first when ``kill``); its exit code, or None when it is
    unknown (someone else reaped it, or SIGCHLD is ignored)."""
    if kill:
        _kill(pid)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)
