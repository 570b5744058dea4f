"""The Raft loop: one thread that owns the :class:`~catga_sync.raft.RaftCore` and drives it.

Everything else (peer RPC handlers, the pacemaker job, callers of ``propose``) talks to the
loop through its inbox (:mod:`.inbox`). For every batch of work the loop does, in this order
and only this order:

    **persist** the hard state and entries, **then send** the messages,
    **then apply** committed entries, **then advance** the core.

so that no vote and no acknowledgement leaves before the disk has it (the Ready contract,
:class:`~catga_sync.raft.Ready`). Leader replication traffic (``Ready.early_messages``) may
leave before the persist: the leader's own persist then counts as its acknowledgement.

Time: the core counts ticks. The loop sleeps on its inbox until the first tick that does
something (``RaftCore.ticks_until_due``: an idle follower wakes for its heartbeats and its
election timeout, not a hundred times a second) and runs every tick that elapsed on the
monotonic clock: the quiet ones before a batch's messages, the due ones after them. Ticks that
run later than planned are counted in the stats, never logged one by one.

Logs: what the core reports in ``Ready.events`` becomes one line each on ``catga_sync.raft``
(:mod:`~catga_sync.runtime.eventlog`), after the batch is applied; each message sent and
received is a DEBUG line on ``catga_sync.raft.messages``, checked once per batch or message so
that it costs nothing while that logger is quiet. ``docs/logging.rst`` lists every line.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..errors import CatgaError, ProposalDroppedError, StorageError
from ..raft import Entry, EntryType, HardState, Membership, Message, RaftCore, Ready
from ..storage.base import Storage
from .eventlog import EventLog, message_log
from .inbox import STOP, TICK, Call, Inbox, Proposal
from .outbox import Outbox, ReplySlot
from .persister import Persister
from .snapshots import background_snapshots, compact_from_child
from .status import NodeStats, count_events

__all__ = ["TICK", "Call", "Proposal", "RaftLoop"]

log = logging.getLogger("catga_sync.node")


@dataclass(slots=True)
class _Waiter:
    term: int
    future: Future[Any]
    proposed: float = 0.0


@dataclass(slots=True)
class _ReadWaiter:
    future: Future[int]
    index: int = -1


class RaftLoop:
    """The thread that owns ``core`` and its storage (see the module docstring).

    ``apply(entry)`` runs each committed normal entry and returns its result for the proposer;
    ``restore(data)`` installs a snapshot; ``snapshot()`` takes one for log compaction every
    ``snapshot_every`` applied entries (None: never), in a forked child once one took
    ``background_snapshot_after`` seconds or more (None: never; :mod:`.snapshots`).
    ``published(membership)`` is called after every batch that changed something a status
    shows. ``name_of`` names a member in the log lines (its Raft id when it returns None).
    """

    def __init__(
        self,
        node_id: str,
        core: RaftCore,
        storage: Storage,
        outbox: Outbox,
        stats: NodeStats,
        *,
        hard_state: HardState,
        tick_seconds: float,
        apply: Callable[[Entry], Any],
        restore: Callable[[bytes], None],
        snapshot: Callable[[], bytes] | None,
        snapshot_every: int,
        published: Callable[[Membership | None], None],
        name_of: Callable[[str | None], str | None] | None = None,
        background_snapshot_after: float | None = None,
    ) -> None:
        self.node_id = node_id
        self.core = core
        self.outbox = outbox
        self._stats = stats
        self._apply_entry = apply
        self._restore = restore
        self._snapshot = snapshot
        self._snapshot_every = snapshot_every
        self.background_snapshots = background_snapshots(
            node_id, snapshot, self._deliver_snapshot, background_snapshot_after, snapshot_every
        )
        if self.background_snapshots is not None and core.log.snapshot is not None:
            self.background_snapshots.note_stored(len(core.log.snapshot.data))
        self._published = published
        self._events = EventLog(node_id, name_of)
        self._commit_published = -1
        self._inbox = Inbox()
        self._waiters: dict[int, _Waiter] = {}
        self._drained: list[Proposal] = []
        self._reads: dict[str, _ReadWaiter] = {}
        self._read_ids = itertools.count()
        self._tick_seconds = tick_seconds
        self._tick_origin = time.monotonic()
        self._ticks_done = 0
        self._wake_tick = 1
        self._planned_wake = 0.0
        self.failure: BaseException | None = None
        self._stop_requested = threading.Event()
        self._persister = Persister(
            node_id,
            storage,
            stats,
            hard_state=hard_state,
            # A write slower than half an election timeout starves the loop's ticks and heartbeats.
            slow_seconds=core.config.election_ticks * tick_seconds / 2,
            published=published,
            stopping=self._stop_requested,
        )
        self._stop_error: BaseException = CatgaError(f"node {node_id} stopped")
        self._exit_lock = threading.Lock()
        self._exited = False
        self._exit_callbacks: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name=f"catga-raft-{node_id}", daemon=True)

    # -- from other threads ---------------------------------------------------------------------

    def start(self) -> None:
        self._tick_origin = time.monotonic()
        self._ticks_done = 0
        self._thread.start()

    def stop(self, error: BaseException, timeout: float = 5.0) -> bool:
        """Stop after the batch at hand, failing every waiting caller with ``error``; True once
        stopped (the storage is then free to close). Past ``timeout`` (a persist that hangs) it
        stops on its own once the batch ends, and runs :meth:`after_exit` callbacks then."""
        self._stop_error = error
        self._stop_requested.set()
        thread = self._thread
        if not thread.is_alive():
            self.fail_waiters(error)  # never started, or already ended: nobody else runs it
            return True
        if thread is threading.current_thread():
            return False
        self._inbox.put(STOP)
        thread.join(timeout)
        return not thread.is_alive()

    def after_exit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread when it ends (at once if it has ended)."""
        with self._exit_lock:
            if not self._exited:
                self._exit_callbacks.append(callback)
                return
        callback()

    @property
    def storage_unavailable(self) -> str | None:
        """Why the database is unreachable while a write waits for it (None: it is not)."""
        return self._persister.storage_unavailable

    def put(self, event: object) -> None:
        """Queue a peer message, a :class:`Call`, a :class:`Proposal`, a reply slot or TICK."""
        self._inbox.put(event)

    def put_message(self, message: Message) -> None:
        """Queue a peer message; a plain heartbeat's answer waits for the next wake-up
        (:mod:`.inbox`)."""
        self._inbox.put_message(message, self.core)

    def nudge(self) -> None:
        """The pacemaker's run: wake the loop only if it overslept its planned wake-up (on time,
        the run would be one more wake-up for nothing: a tenth of an idle leader's CPU)."""
        if time.monotonic() > self._planned_wake + self._tick_seconds:
            self._inbox.put(TICK)

    def ask_read_index(self, core: RaftCore, future: Future[int]) -> str:
        """On the loop: ask the core for a read index; ``future`` gets it once this node has
        applied up to it. Returns the request's context (forget it with :meth:`forget_read`)."""
        context = f"{self.node_id}:{next(self._read_ids)}"
        self._reads[context] = _ReadWaiter(future)
        core.read_index(context)
        return context

    def forget_read(self, context: str) -> None:
        self._reads.pop(context, None)

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            try:
                self._serve()
            finally:  # before the waiters fail: nothing is delivered to a loop that ended
                self._stop_background_snapshots()
        except BaseException as exc:  # a storage failure or a bug: stop, loudly
            self.failure = exc
            log.critical(
                "node %s: Raft loop failed, node stopped: %s",
                self.node_id,
                exc,
                exc_info=not isinstance(exc, StorageError),
            )
            self.fail_waiters(CatgaError(f"node {self.node_id} failed: {exc}"))
            self._published(None)
        else:
            self.fail_waiters(self._stop_error)  # on this thread: it owns the waiters
        finally:
            with self._exit_lock:
                self._exited = True
                callbacks, self._exit_callbacks = self._exit_callbacks, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("node %s: cleanup after the Raft loop failed", self.node_id)

    def _serve(self) -> None:
        """Handle events, batch by batch, until STOP."""
        core, inbox, tick = self.core, self._inbox, self._tick_seconds
        while True:
            self._wake_tick = self._ticks_done + core.ticks_until_due()
            wake = self._tick_origin + self._wake_tick * tick
            parked = self.outbox.next_deadline()
            if parked is not None:
                wake = min(wake, parked)
            self._planned_wake = wake
            try:
                event = inbox.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                event = TICK
            if event is STOP:
                return
            for message in inbox.take_unhurried():  # before any tick: check-quorum counts them
                self._step(core, message)
            self._tick(core, quiet=True)
            self._handle(core, event)
            # Drain what else arrived, so one Ready (one transaction) covers the batch.
            for _ in range(4096):
                try:
                    event = inbox.get_nowait()
                except queue.Empty:
                    break
                if event is STOP:
                    self._append_proposals(core)
                    self._process_ready(core)
                    self._persister.write_commit(stopping=True)
                    return
                self._handle(core, event)
            for message in inbox.take_unhurried():  # those that came during the batch
                self._step(core, message)
            self._append_proposals(core)
            self._tick(core)
            self._process_ready(core)
            self.outbox.flush_due(time.monotonic())
            if self.outbox.has_open_slots:
                self.outbox.close_slots()
            self._persister.write_commit()  # after the answers: off every caller's path

    def _handle(self, core: RaftCore, event: object) -> None:
        if event is TICK:
            return
        if isinstance(event, Proposal):
            self._drained.append(event)
            return
        self._append_proposals(core)  # keep the order of proposals and other calls
        if isinstance(event, Call):
            try:
                event.future.set_result(event.fn(core))
            except BaseException as exc:
                event.future.set_exception(exc)
        elif isinstance(event, ReplySlot):
            self.outbox.open_slot(event)
            for message in event.messages:
                self._step(core, message)
        else:
            self._step(core, event)  # type: ignore[arg-type]  # a peer message, by elimination

    def _step(self, core: RaftCore, message: Message) -> None:
        self._stats.messages_received += 1
        if message_log.isEnabledFor(logging.DEBUG):
            self._events.messages("<-", (message,))
        try:
            core.step(message)
        except CatgaError as exc:
            self._stats.invalid_messages += 1
            log.debug("node %s dropped a message: %s", self.node_id, exc)

    def _append_proposals(self, core: RaftCore) -> None:
        """Append the proposals drained so far as one batch and answer each with its index."""
        batch = self._drained
        if not batch:
            return
        self._drained = []
        try:
            entries = core.propose_many([p.data for p in batch])
        except BaseException as exc:  # not the leader (any more): every one of them fails
            for proposal in batch:
                proposal.future.set_exception(exc)
            return
        for proposal, entry in zip(batch, entries, strict=True):
            self._waiters[entry.index] = _Waiter(entry.term, proposal.future, proposal.created)

    def _tick(self, core: RaftCore, *, quiet: bool = False) -> None:
        """Run the ticks that elapsed on the monotonic clock since the last ones; ``quiet``:
        only those before the planned wake-up, which do nothing but count. Those run before a
        batch's messages, as if the loop had woken for each (a heartbeat resets the election
        timer after them, a vote request sees how long the leader has been silent); the rest
        run after its messages, so a heartbeat that queued up beats a late election timeout."""
        elapsed = int((time.monotonic() - self._tick_origin) / self._tick_seconds)
        if quiet:
            elapsed = min(elapsed, self._wake_tick - 1)
        due = elapsed - self._ticks_done
        if due <= 0:
            return
        planned = max(1, self._wake_tick - self._ticks_done)  # quiet ticks slept through
        if due > planned:
            self._stats.late_ticks += due - planned
        # After a long pause (SIGSTOP, a debugger) one election timeout's worth is enough.
        for _ in range(min(due, planned + core.config.election_ticks)):
            core.tick()
        self._ticks_done += due
        self._stats.ticks += due

    # -- one batch: persist, send, apply, advance -------------------------------------------------

    def _process_ready(self, core: RaftCore) -> None:
        stats, outbox = self._stats, self.outbox
        changed = False
        membership: Membership | None = None
        while core.has_ready() or self._maybe_compact(core):
            ready = core.ready()
            stats.readies += 1
            if ready.early_messages:
                outbox.send(ready.early_messages)
            self._persister.persist(ready)  # 1. persist (a commit index alone: later)
            stats.entries_persisted += len(ready.entries)
            stats.bytes_persisted += sum(len(e.data) for e in ready.entries)
            if ready.messages:  # 2. send
                outbox.send(ready.messages)
                if outbox.has_open_slots:
                    # The answers to the open peer requests are all in this first Ready,
                    # persisted: they leave now, not after the apply (on a follower, of the
                    # previous command, whose commit rides on this AppendEntries).
                    outbox.close_slots()
            stats.messages_sent += len(ready.messages) + len(ready.early_messages)
            self._apply(ready)  # 3. apply
            core.advance(ready)  # 4. advance
            if ready.events:
                count_events(stats, ready.events)
                self._events.report(ready.events)
            if message_log.isEnabledFor(logging.DEBUG):
                self._events.messages("->", (*ready.early_messages, *ready.messages))
            if ready.soft_state is not None or ready.committed_entries or ready.membership:
                changed = True
            if ready.membership is not None:
                membership = ready.membership
        if changed or membership is not None or core.commit_index != self._commit_published:
            self._commit_published = core.commit_index
            self._published(membership)

    def _apply(self, ready: Ready) -> None:
        if ready.apply_snapshot and ready.snapshot is not None:
            self._restore(ready.snapshot.data)
        for entry in ready.committed_entries:
            result: Any = None
            error: BaseException | None = None
            if entry.type is EntryType.NORMAL and entry.data:
                try:
                    result = self._apply_entry(entry)
                except Exception as exc:  # the caller gets it; the loop goes on
                    error = exc
            waiter = self._waiters.pop(entry.index, None)
            if waiter is None:
                continue
            if waiter.term != entry.term:
                waiter.future.set_exception(
                    ProposalDroppedError(
                        "the proposal was overwritten by a new leader before it committed; "
                        "retry it (with the same request id)"
                    )
                )
                continue
            self._stats.commit_latency_seconds.observe(time.monotonic() - waiter.proposed)
            if error is not None:
                waiter.future.set_exception(error)
            else:
                waiter.future.set_result((entry.index, entry.term, result))
        for read in ready.read_states:
            waiter_read = self._reads.get(read.context)
            if waiter_read is not None:
                waiter_read.index = read.index
        self._release_reads()

    def _release_reads(self) -> None:
        if not self._reads:
            return
        applied = self.core.applied_index
        for context, waiter in list(self._reads.items()):
            if 0 <= waiter.index <= applied:
                del self._reads[context]
                if not waiter.future.done():  # a retried read shares its caller's future
                    waiter.future.set_result(waiter.index)

    def _maybe_compact(self, core: RaftCore) -> bool:
        """Snapshot and compact every ``snapshot_every`` entries, here or in a forked child."""
        snapshot = self._snapshot
        if snapshot is None or core.applied_index - core.log.offset < self._snapshot_every:
            return False
        index, background = core.applied_index, self.background_snapshots
        if background is None:
            data: bytes | None = snapshot()
        else:
            data = background.take(index, core.log.term(index) or 0)
        if data is None:  # a child takes it
            return False
        core.compact(index, data)
        self._stats.snapshots += 1
        return True

    def _stop_background_snapshots(self) -> None:
        try:  # never in place of the loop's own end or failure
            if self.background_snapshots is not None:
                self.background_snapshots.stop()
        except Exception:
            log.exception("node %s: stopping its snapshot child failed", self.node_id)

    def _deliver_snapshot(self, index: int, term: int, data: bytes | None) -> None:
        """From the snapshot reader thread: compact the log at ``index`` on the loop."""
        background = self.background_snapshots
        if self._stop_requested.is_set() or background is None:
            return

        def compact(core: RaftCore) -> None:
            background.done(core.applied_index, taken=data is not None)
            if data is not None and compact_from_child(core, index, term, data):
                self._stats.snapshots += 1

        call = Call(compact)
        call.future.add_done_callback(_log_compaction_failure)
        self.put(call)

    def fail_waiters(self, error: BaseException) -> None:
        """Fail every caller still waiting on the loop (it stopped or failed). Only the loop's
        own thread calls this, or another once that thread has ended."""
        self.outbox.clear()
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(error)
        reads, self._reads = self._reads, {}
        for read in reads.values():
            if not read.future.done():
                read.future.set_exception(error)
        drained, self._drained = self._drained, []
        for proposal in drained:
            if not proposal.future.done():
                proposal.future.set_exception(error)
        while True:  # events queued after the loop's end would wait forever
            try:
                event = self._inbox.get_nowait()
            except queue.Empty:
                break
            future = getattr(event, "future", None)
            if isinstance(future, Future) and not future.done():
                future.set_exception(error)
            if isinstance(event, ReplySlot):
                event.done.set()


def _log_compaction_failure(future: Future[Any]) -> None:
    error = future.exception()
    if error is not None and not isinstance(error, CatgaError):  # CatgaError: the loop ended
        log.error("compacting the log with a background snapshot failed: %r", error)
