"""Raft's safety properties (Figure 3 of the paper), checked by the simulator after every event.

A single node cannot tell that it broke safety: the evidence is spread over the cluster. So
:class:`Invariants` keeps the cluster-wide facts, who led each term, a fingerprint of every log
prefix any node persisted, what was committed and what was applied at each index, and the
simulator's driver calls it at each step of the Ready contract (persist, send, apply):

- *election safety*: at most one leader per term (:meth:`Invariants.became_leader`);
- *log matching*: entries with the same index and term have identical prefixes
  (:meth:`Invariants.log_matching`);
- *leader completeness*: a leader holds every entry committed in earlier terms;
- *state machine safety*: every node applies the same entry at a given index
  (:meth:`Invariants.applied_entry`);
- term, vote and commit never go backwards on a node, across restarts too
  (:meth:`Invariants.hard_state`);
- nothing is acknowledged (vote granted, entries or snapshot accepted) before it is persisted
  (:meth:`Invariants.acknowledged_is_persisted`).

A broken property is reported through the ``fail`` callback the simulator passes in, which
raises :class:`InvariantViolation` with the seed, the time and the last events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, Protocol

from ..raft import (
    AppendResponse,
    Entry,
    HardState,
    Message,
    RaftCore,
    SnapshotMeta,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
)


class _Disk(Protocol):
    """What the checks read of a simulated disk (:class:`catga_sync.testing.nodes._Disk`)."""

    hard: HardState
    entries: list[Entry]
    hashes: list[int]

    @property
    def offset(self) -> int: ...

    @property
    def last_index(self) -> int: ...


__all__ = ["InvariantViolation", "Invariants"]


class InvariantViolation(AssertionError):
    """A Raft safety property was broken; the message names the seed to replay."""


class Invariants:
    """The cluster-wide facts the safety checks compare each node against.

    ``fail(node_id, what)`` is called, and must raise, when a check finds a violation.
    """

    def __init__(self, fail: Callable[[str, str], NoReturn]) -> None:
        self._fail = fail
        self.leader_of_term: dict[int, str] = {}
        """term -> the node that led it."""
        self.prefix_hash: dict[tuple[int, int], int] = {}
        """(index, term) -> the fingerprint of the log prefix that ends with that entry."""
        self.committed: dict[int, tuple[int, int, int]] = {}
        """index -> (entry term, prefix fingerprint, term of the commit) of the committed entry."""
        self.applied: dict[int, tuple[int, bytes]] = {}
        """index -> (term, data) of the first entry any node applied there."""

    # -- elections -----------------------------------------------------------------------------

    def became_leader(self, node_id: str, term: int, core: RaftCore) -> None:
        """Election safety and leader completeness, checked when ``node_id`` starts leading."""
        holder = self.leader_of_term.setdefault(term, node_id)
        if holder != node_id:
            self._fail(node_id, f"election safety: {holder} already leads term {term}")
        log = core.log
        for index in range(log.offset + 1, max(self.committed, default=0) + 1):
            committed = self.committed.get(index)
            if committed and committed[2] < term and log.term(index) != committed[0]:
                self._fail(
                    node_id,
                    f"leader completeness: leader of term {term} "
                    f"lacks entry {index}/{committed[0]} committed earlier",
                )

    # -- persisting ----------------------------------------------------------------------------

    def hard_state(self, node_id: str, old: HardState, new: HardState) -> None:
        """Term, vote and commit never go backwards (``old`` is what the disk holds)."""
        if new.term < old.term:
            self._fail(node_id, f"term went back from {old.term} to {new.term}")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            self._fail(node_id, f"vote changed from {old.vote} to {new.vote} in term {new.term}")
        if new.commit < old.commit:
            self._fail(node_id, f"commit went back from {old.commit} to {new.commit}")

    def snapshot_base(self, node_id: str, meta: SnapshotMeta) -> int:
        """The prefix fingerprint a received snapshot stands for; some node must have logged
        its last entry, or the snapshot came from nowhere."""
        base = self.prefix_hash.get((meta.index, meta.term))
        if base is None:
            self._fail(
                node_id,
                f"received a snapshot at {meta.index}/{meta.term} that no node ever logged",
            )
        return base

    def entries_attach(self, node_id: str, disk: _Disk, first: int) -> None:
        """New entries from ``first`` on continue or overwrite the persisted log, leaving no
        gap and not reaching under its snapshot."""
        keep = first - 1 - disk.offset
        if keep < 0 or keep > len(disk.entries):
            self._fail(
                node_id,
                f"persisting entries from {first} onto a log {disk.offset}..{disk.last_index}",
            )

    def log_matching(self, node_id: str, entry: Entry, previous: int) -> int:
        """The fingerprint of the prefix that ends with ``entry`` (``previous``: of the one
        before it); another node's entry at the same index and term must follow the same."""
        fingerprint = hash((previous, entry.index, entry.term, entry.type, entry.data))
        known = self.prefix_hash.setdefault((entry.index, entry.term), fingerprint)
        if known != fingerprint:
            self._fail(
                node_id,
                f"log matching: entry {entry.index}/{entry.term} "
                "follows a different prefix than on another node",
            )
        return fingerprint

    def committed_on(self, node_id: str, disk: _Disk, old_commit: int, hard: HardState) -> None:
        """Note what the new commit index covers: one entry, ever, per committed index."""
        for index in range(max(old_commit, disk.offset) + 1, hard.commit + 1):
            k = index - disk.offset - 1
            if k >= len(disk.entries):
                break
            fact = (disk.entries[k].term, disk.hashes[k], hard.term)
            known = self.committed.setdefault(index, fact)
            if known[:2] != fact[:2]:
                self._fail(node_id, f"two different entries committed at index {index}")

    def commit_persisted(self, node_id: str, disk: _Disk) -> None:
        """A persisted commit index never points past the persisted log."""
        if disk.hard.commit > disk.last_index:
            self._fail(
                node_id,
                f"persisted commit {disk.hard.commit} beyond its persisted log ({disk.last_index})",
            )

    # -- applying ------------------------------------------------------------------------------

    def applied_entry(self, node_id: str, entry: Entry) -> None:
        """State machine safety: every node applies the same entry at a given index."""
        first = self.applied.setdefault(entry.index, (entry.term, entry.data))
        if first != (entry.term, entry.data):
            self._fail(
                node_id,
                f"state machine safety: applied {entry.index}/"
                f"{entry.term} where another node applied {first[0]}",
            )

    # -- sending -------------------------------------------------------------------------------

    def acknowledged_is_persisted(self, node_id: str, disk: _Disk, m: Message) -> None:
        """A vote, an append or a snapshot is acknowledged only once the disk has it."""
        if (
            isinstance(m, (VoteRequest, VoteResponse))
            and not m.pre_vote
            and disk.hard.term > m.term
        ):
            return  # a later term is on disk: this node can never act in m.term again
        if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
            if (disk.hard.term, disk.hard.vote) != (m.term, m.to):
                self._fail(
                    node_id, f"granted a vote to {m.to} in term {m.term} before persisting it"
                )
        elif isinstance(m, VoteRequest) and not m.pre_vote:
            if (disk.hard.term, disk.hard.vote) != (m.term, node_id):
                self._fail(node_id, f"asked for votes in term {m.term} before persisting its own")
        elif isinstance(m, AppendResponse) and not m.reject:
            if disk.last_index < m.index or disk.hard.term < m.term:
                self._fail(
                    node_id,
                    f"acknowledged entries up to {m.index} with only {disk.last_index} persisted",
                )
        elif isinstance(m, SnapshotResponse) and m.done:
            if max(disk.offset, disk.last_index) < m.index:
                self._fail(node_id, f"acknowledged snapshot {m.index} before persisting it")
