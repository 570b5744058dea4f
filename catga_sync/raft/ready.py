"""What the core hands its driver, and what a driver hands back after a restart."""

from __future__ import annotations

from dataclasses import dataclass

from .events import RaftEvent
from .messages import (
    Entry,
    HardState,
    Membership,
    Message,
    ReadState,
    Snapshot,
    SoftState,
)


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver. Handle it in this order, then call ``advance(ready)``:

    1. **Persist** ``hard_state`` (when not None), ``snapshot`` and ``entries`` — atomically if
       the storage can. A snapshot replaces every stored entry at or below its index (all of them
       when ``apply_snapshot`` is set); ``entries`` replace every stored entry from
       ``entries[0].index`` on. ``early_messages`` may be sent before or during this step.
    2. **Send** ``messages``. They acknowledge votes and entries, so they must never leave before
       step 1 is durable.
    3. **Apply** the snapshot (when ``apply_snapshot``), then ``committed_entries`` in order, and
       answer ``read_states`` once their index is applied.
    4. **Advance**: ``core.advance(ready)``.

    ``events`` say what happened, for people (elections, leaders, membership, snapshots); they
    bind nothing: handle them at any step, or ignore them.

    The core must not be stepped, ticked or proposed to between ``ready()`` and ``advance()``.
    """

    hard_state: HardState | None
    """Term, vote and commit, when they changed since the last Ready."""
    soft_state: SoftState | None
    """Role, leader and term, when they changed since the last Ready."""
    entries: tuple[Entry, ...]
    """Log entries to persist."""
    snapshot: Snapshot | None
    """A snapshot to persist: one the application asked for, or one received from the leader."""
    apply_snapshot: bool
    """True when ``snapshot`` came from the leader and the state machine must restore it."""
    committed_entries: tuple[Entry, ...]
    """Entries now committed, to apply in order (after the snapshot, when there is one)."""
    messages: tuple[Message, ...]
    """Messages to send once this Ready is persisted."""
    early_messages: tuple[Message, ...]
    """Leader replication traffic, safe to send before persisting (thesis §10.2.1)."""
    read_states: tuple[ReadState, ...]
    """Read-index results: serve each read once ``index`` is applied."""
    membership: Membership | None
    """The configuration in force, when it changed (it takes effect when appended)."""
    events: tuple[RaftEvent, ...] = ()
    """What happened since the last Ready, in order (:mod:`catga_sync.raft.events`): campaigns,
    elections won and lost, leaders stepping down and seen, membership changes applied,
    snapshots taken, sent and installed, votes cast. Empty in a steady state: never one per
    heartbeat or entry."""

    @property
    def must_persist(self) -> bool:
        return self.hard_state is not None or bool(self.entries) or self.snapshot is not None


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What a storage hands back to rebuild a core after a restart."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    """The stored log entries after the snapshot, consecutive."""
