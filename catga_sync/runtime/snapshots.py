"""Snapshots taken in a forked child, so that encoding a large state does not stop the Raft
loop (Redis's ``BGSAVE``).

Encoding the state machines is the loop's longest pause: a million orders are about 2 s of
``json.dumps``, ten election timeouts at the guide's timings, in which the node neither
heartbeats nor answers. Once a snapshot took ``after`` seconds or more on the loop (or the
node started from a stored snapshot that large), the next ones are taken like this instead:

1. **Fork**, on the loop, between two batches: every applied entry is in the state machines,
   and the child's copy-on-write memory keeps them as of that index, whatever the parent
   applies next. Forking costs the copy of the page tables, milliseconds where the encoding
   costs seconds.
2. **Encode**, in the child: it turns the garbage collector off (a collection could run a
   finalizer of the parent's that waits for a lock held by a thread the child does not have),
   closes every descriptor it inherited but stdin, stdout, stderr and the pipe (a child must
   not keep the node's ownership ``flock``, its listening socket or its database connections
   alive after the parent dies), runs ``snapshot()``, writes the length and the bytes to the
   pipe and exits with ``os._exit``: no ``atexit``, no destructors, none of the parent's
   threads (a forked child has only the forking one).
3. **Compact**, on the loop: a thread of the parent reads the bytes and hands them to
   ``deliver(index, term, data)``; the loop compacts the log at the index of the fork and calls
   :meth:`BackgroundSnapshots.done`. Until then no other child starts.

One child at a time. A child that fails, is killed, or runs past ``timeout`` is handed over as
``data`` None: it costs only that snapshot (a warning), never the node. Where ``os.fork`` is
missing, or a fork fails, snapshots stay on the loop.

Memory: CPython's reference counts make the child write to every object it encodes, so the
child ends up with its own copy of most of the state's pages, whatever the parent does; add
the snapshot's bytes (in the child, and once in the parent when they arrive).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..raft import RaftCore

__all__ = [
    "ENCODE_BYTES_PER_SECOND",
    "MAX_FAILURES",
    "BackgroundSnapshots",
    "background_snapshots",
    "compact_from_child",
    "fork_available",
]

log = logging.getLogger("catga_sync.node")

ENCODE_BYTES_PER_SECOND = 30_000_000
"""About how fast ``json.dumps`` encodes a state machine's state (61 MB of orders in 1.9 s on
the benchmarks' machine): a stored snapshot of ``after`` × this many bytes or more means the
next one is taken in a child from the start, without a slow one on the loop first."""

MAX_FAILURES = 3
"""Children failed in a row after which the next snapshot is taken on the loop: a
``snapshot()`` that raises then stops the node loudly, as it did before there were children."""

_LENGTH_BYTES = 8

# Python 3.12+ warns at every fork of a threaded process that the child may deadlock on a lock
# another thread held. This module's children only encode and exit (see the docstring); the
# filter matches the warnings attributed to this module alone.
warnings.filterwarnings(
    "ignore",
    message=r"This process .* is multi-threaded",
    category=DeprecationWarning,
    module=__name__,
)


def fork_available() -> bool:
    return hasattr(os, "fork") and hasattr(os, "pipe")


def background_snapshots(
    node_id: str,
    snapshot: Callable[[], bytes] | None,
    deliver: Callable[[int, int, bytes | None], None],
    after: float | None,
    every: int,
) -> BackgroundSnapshots | None:
    """The loop's :class:`BackgroundSnapshots`; None when it takes no snapshots, ``after`` is
    None, or this platform cannot fork."""
    if snapshot is None or after is None or not fork_available():
        return None
    return BackgroundSnapshots(node_id, snapshot, deliver, after=after, every=every)


@dataclass
class _Child:
    pid: int
    fd: int
    index: int
    term: int
    started: float
    reaped: bool = False


class BackgroundSnapshots:
    """Takes node ``node_id``'s snapshots (``snapshot()``) in a forked child and hands each to
    ``deliver(index, term, data)`` from a reader thread (``data`` None: the child failed); see
    the module docstring. It is :attr:`busy` from :meth:`start` until :meth:`done`.

    ``after``: a snapshot on the loop that took at least this many seconds makes the next ones
    background ones (0: every one). Only the Raft loop's thread calls :meth:`start`,
    :meth:`done`, :meth:`note_on_loop` and :meth:`kill_if_overdue`; :meth:`stop` may come
    from any thread.
    """

    def __init__(
        self,
        node_id: str,
        snapshot: Callable[[], bytes],
        deliver: Callable[[int, int, bytes | None], None],
        *,
        after: float,
        every: int,
        timeout: float = 600.0,
    ) -> None:
        self.node_id = node_id
        self._snapshot = snapshot
        self._deliver = deliver
        self._after = after
        self._every = every
        self._timeout = timeout
        self._wanted = after <= 0
        self._failures = 0
        self._not_before = 0
        self._child: _Child | None = None
        self._busy = False
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        """Guards signalling the child against its reaping: a reaped pid may be reused."""
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
        """A child's snapshot is on its way (no other starts until :meth:`done`)."""
        return self._busy

    @property
    def child_pid(self) -> int | None:
        """The child encoding now, if any."""
        child = self._child
        return child.pid if child is not None and not child.reaped else None

    def plan(self, applied: int) -> str:
        """How to take the snapshot due at ``applied``: ``"fork"`` (:meth:`start`),
        ``"here"`` (on the loop, then :meth:`note_on_loop`) or ``"wait"`` (a child's is on
        its way, or one failed less than ``every`` entries ago)."""
        if self._busy:
            self.kill_if_overdue()
            return "wait"
        if applied < self._not_before:
            return "wait"
        return "fork" if self.wanted and self._failures < MAX_FAILURES else "here"

    def take(self, index: int, term: int) -> bytes | None:
        """On the loop, with a snapshot due at ``index`` (of ``term``): its bytes when it is to
        be taken here (taken and timed, :meth:`note_on_loop`); None when a child takes it or
        must first be waited for."""
        way = self.plan(index)
        if way == "wait":
            return None
        if way == "fork":
            try:
                self.start(index, term)
                return None
            except OSError as exc:
                log.warning(
                    "node %s: no child for a snapshot, taking it here: %s", self.node_id, exc
                )
        started = time.monotonic()
        data = self._snapshot()
        self.note_on_loop(time.monotonic() - started)
        return data

    def note_on_loop(self, seconds: float) -> None:
        """A snapshot took ``seconds`` on the loop: past ``after``, the next go to a child."""
        self._failures = 0
        if seconds >= self._after:
            self._switch(f"a snapshot took {seconds * 1000:.0f} ms on the Raft loop")

    def note_stored(self, size: int) -> None:
        """The node starts from a stored snapshot of ``size`` bytes: one that large would take
        ``after`` or more to encode (:data:`ENCODE_BYTES_PER_SECOND`), so go to a child now."""
        if size >= self._after * ENCODE_BYTES_PER_SECOND:
            self._switch(f"its stored snapshot is {size / 1e6:.1f} MB")

    def _switch(self, why: str) -> None:
        if not self._wanted:
            log.info(
                "node %s: %s; from now on snapshots are taken in a forked child",
                self.node_id,
                why,
            )
        self._wanted = True

    def start(self, index: int, term: int) -> None:
        """Fork a child that snapshots the state as of ``index`` (of ``term``), now applied.
        Raises ``OSError`` when that fails (the caller takes the snapshot itself)."""
        if self._busy or self._stopping.is_set():
            return
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # the child: never returns
            self._encode_in_child(read_fd, write_fd)
        # (A fork by another thread before this close would keep the write end open in its
        # child, and the reader would see no end after a kill; stop() then gives up waiting.)
        os.close(write_fd)
        child = self._child = _Child(pid, read_fd, index, term, time.monotonic())
        self._busy = True
        try:
            self._reader = threading.Thread(
                target=self._read, args=(child,), name=f"catga-snapshot-{self.node_id}", daemon=True
            )
            self._reader.start()
        except Exception as exc:  # no thread to read it (RuntimeError): end the child here
            self._kill(child)
            self._reap(child)
            os.close(read_fd)
            self._child, self._busy, self._reader = None, False, None
            raise OSError(f"cannot start the snapshot reader: {exc}") from exc

    def done(self, applied: int, *, taken: bool) -> None:
        """The loop has handled the last delivery, at ``applied``: another child may start; if
        it was a failed one (not ``taken``), only ``every`` entries later."""
        self._busy = False
        if taken:
            self._failures = 0
        else:
            self._failures += 1
            self._not_before = applied + self._every

    def kill_if_overdue(self) -> None:
        """Kill a child that has run longer than ``timeout`` (its reader then hands it over as
        failed)."""
        child = self._child
        if child is not None and time.monotonic() - child.started > self._timeout:
            self._kill(child)

    def stop(self, timeout: float = 5.0) -> None:
        """Kill a child still encoding and wait for its reader; nothing more is delivered.
        Idempotent."""
        self._stopping.set()
        child = self._child
        if child is not None:
            self._kill(child)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)

    # -- the child ------------------------------------------------------------------------------

    def _encode_in_child(self, read_fd: int, write_fd: int) -> None:
        code = 1
        try:
            gc.disable()
            os.close(read_fd)
            _close_inherited(keep=write_fd)
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

    def _read(self, child: _Child) -> None:
        data: bytes | None = None
        why = ""
        try:
            # Blocking reads, one allocation of the snapshot's size: a child that hangs is
            # killed by the loop (kill_if_overdue) or by stop(), which ends the read.
            try:
                pipe = os.fdopen(child.fd, "rb")
            except BaseException:
                os.close(child.fd)
                raise
            with pipe:
                header = pipe.read(_LENGTH_BYTES)
                if len(header) < _LENGTH_BYTES:
                    why = "the child ended before writing it"
                else:
                    size = int.from_bytes(header, "big")
                    data = pipe.read(size)
                    got = len(data)
                    if got < size:
                        data, why = None, f"the child ended after {got} of {size} bytes"
        except Exception as exc:
            data, why = None, f"reading it failed: {exc!r}"
        if data is None:
            self._kill(child)
        status = self._reap(child)
        if data is not None and status not in (0, None):
            data, why = None, f"the child exited with status {status}"
        if self._stopping.is_set():
            return
        if data is None:
            self.failed += 1
            log.warning(
                "node %s: the background snapshot at index %d was not taken (%s); the next "
                "one is due %d entries later",
                self.node_id,
                child.index,
                why or "killed",
                self._every,
            )
        else:
            self.taken += 1
        self._deliver(child.index, child.term, data)

    def _kill(self, child: _Child) -> None:
        with self._lock:
            if not child.reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def _reap(self, child: _Child) -> int | None:
        """Wait for the child; its exit code, or None when it is unknown (someone else reaped
        it, or SIGCHLD is ignored)."""
        status: int | None = None
        try:
            if hasattr(os, "waitid"):  # wait for the exit without reaping: the pid stays ours
                os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
                with self._lock:  # reaped where _kill cannot signal it meanwhile
                    _, status = os.waitpid(child.pid, 0)
            else:
                _, status = os.waitpid(child.pid, 0)
        except ChildProcessError:
            status = None
        with self._lock:
            child.reaped = True
            if self._child is child:
                self._child = None
        return None if status is None else os.waitstatus_to_exitcode(status)


def _close_inherited(keep: int) -> None:
    """In the child: close every descriptor but 0, 1, 2 and ``keep``."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = []
    if fds:
        for fd in fds:
            if fd > 2 and fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return
    import resource  # Unix only, as fork is

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if 0 < soft < (1 << 20) else (1 << 20)
    os.closerange(3, keep)
    os.closerange(keep + 1, limit)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def compact_from_child(core: RaftCore, index: int, term: int, data: bytes) -> bool:
    """On the loop: compact ``core``'s log with a child's snapshot of ``index`` (of ``term``),
    unless the log moved past it meanwhile (a snapshot installed from the leader, another
    compaction). True when it did."""
    log_ = core.log
    if not (log_.offset < index <= log_.applied and log_.term(index) == term):
        return False
    core.compact(index, data)
    return True
