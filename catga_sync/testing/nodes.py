"""One simulated node: a Raft core, its "disk" and its application state machine.

The disk holds exactly what the Ready contract told the driver to persist, nothing more, so a
crash (dropping the core and keeping the disk) loses what a real node would lose. It also keeps
a fingerprint of every log prefix it holds, which the log-matching invariant compares across
nodes (:mod:`catga_sync.testing.invariants`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..raft import (
    Entry,
    HardState,
    PersistedState,
    RaftConfig,
    RaftCore,
    RaftEvent,
    ReadState,
    Ready,
    Snapshot,
)

if TYPE_CHECKING:
    from .invariants import Invariants

__all__ = ["ListStateMachine", "SimStateMachine"]


class SimStateMachine(Protocol):
    """What the simulator needs from an application state machine."""

    def apply(self, index: int, data: bytes) -> object: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class ListStateMachine:
    """The simplest state machine: the list of commands applied, in order."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, index: int, data: bytes) -> object:
        self.items.append(data)
        return len(self.items)

    def snapshot(self) -> bytes:
        return json.dumps([base64.b64encode(i).decode() for i in self.items]).encode()

    def restore(self, data: bytes) -> None:
        self.items = [base64.b64decode(i) for i in json.loads(data)]


@dataclass
class _Disk:
    """What survives a crash: exactly what the Ready contract told the driver to persist."""

    hard: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    snapshot_hash: int = 0
    entries: list[Entry] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    """hashes[k] fingerprints the whole log prefix ending at entries[k] (log matching)."""

    @property
    def offset(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def state(self) -> PersistedState:
        return PersistedState(self.hard, self.snapshot, tuple(self.entries))

    def persist(self, node_id: str, ready: Ready, check: Invariants) -> None:
        """Write what ``ready`` says to persist: the snapshot, the entries (overwriting a
        conflicting tail), then the hard state; ``check`` sees every step."""
        if ready.hard_state is not None:
            check.hard_state(node_id, self.hard, ready.hard_state)
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            if ready.apply_snapshot:  # from the leader: it replaces the whole log
                base = check.snapshot_base(node_id, meta)
                self.entries, self.hashes = [], []
                self.snapshot_hash = base
            else:  # this node compacted its own log: the prefix up to the snapshot goes
                keep = meta.index - self.offset
                self.snapshot_hash = self.hashes[keep - 1] if keep > 0 else self.snapshot_hash
                self.entries, self.hashes = self.entries[keep:], self.hashes[keep:]
            self.snapshot = ready.snapshot
        if ready.entries:
            first = ready.entries[0].index
            check.entries_attach(node_id, self, first)
            keep = first - 1 - self.offset
            del self.entries[keep:], self.hashes[keep:]
            previous = self.hashes[-1] if self.hashes else self.snapshot_hash
            for entry in ready.entries:
                previous = check.log_matching(node_id, entry, previous)
                self.entries.append(entry)
                self.hashes.append(previous)
        if ready.hard_state is not None:
            check.committed_on(node_id, self, self.hard.commit, ready.hard_state)
            self.hard = ready.hard_state
            check.commit_persisted(node_id, self)


@dataclass
class _Node:
    id: str
    config: RaftConfig
    core: RaftCore | None
    disk: _Disk
    machine: SimStateMachine
    applied: list[tuple[int, int]] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    events: list[RaftEvent] = field(default_factory=list)
    """Every ``Ready.events`` this node produced, in order, across restarts."""

    @property
    def alive(self) -> bool:
        return self.core is not None
