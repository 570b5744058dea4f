"""The Ready contract checked on real nodes: nothing is acknowledged before it is durable.

The node-level twin of the simulator's "acknowledged is persisted" invariant
(:mod:`catga_sync.testing`). One :class:`ContractChecker` watches a whole cluster through a
pair of wrappers around each node's ports:

- :class:`CheckingStorage` wraps the node's :class:`~catga_sync.storage.base.Storage` and keeps
  an image of what it has made durable: the image changes only once ``persist()`` returned;
- :class:`CheckingTransport` wraps its :class:`~catga_sync.transport.base.Transport` and, before
  handing a batch on, checks every message against the sender's durable image:

  * no message of term T (pre-vote probes aside) leaves before term T is on the sender's disk;
  * a granted vote leaves only once (term, vote for that candidate) is on disk, and a campaign's
    VoteRequest once the candidate's vote for itself is;
  * an AppendResponse acknowledging index i leaves only once entries up to i are on disk, the
    one at i in the term the leader of that term sent for i (log matching: then the whole prefix
    matches);
  * a SnapshotResponse saying "installed" leaves only once the snapshot is on disk;

  and, as each persist returns, that nothing but a new commit index was written without an
  fsync (``sync=False``): a term, a vote, entries or a snapshot must survive a power loss.

A violation is recorded (and logged), never raised into the node's Raft loop: the loop would die
of it and hide the cause. :meth:`ContractChecker.assert_clean` fails with every violation; the
:class:`~helpers.cluster.LocalCluster` calls it when it stops. ``checked`` counts what was
checked, so a test can show its check was not vacuous.

Over HTTP a node answers a peer's request inline, in the HTTP response, without going through
its transport; those answers are checked when they arrive (:meth:`ContractChecker.reply_receiver`),
against the sender's disk at that moment.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    Message,
    PersistedState,
    Snapshot,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
)
from catga_sync.storage.base import Storage
from catga_sync.transport.base import PeerReceiver, Transport

from .wrapping import StorageWrapper

log = logging.getLogger("tests.checking")

__all__ = [
    "CheckedReplies",
    "CheckingStorage",
    "CheckingTransport",
    "ContractChecker",
    "DurableImage",
]


@dataclass
class DurableImage:
    """What one node's storage holds, as far as its ``persist()`` calls that returned say."""

    hard: HardState = field(default_factory=HardState)
    snapshot_index: int = 0
    snapshot_term: int = 0
    terms: dict[int, int] = field(default_factory=dict)
    """index -> term of every stored entry after the snapshot."""
    installed_snapshots: int = 0
    """Snapshots received from a leader (``snapshot_replaces_log``) made durable."""
    persists: int = 0

    @classmethod
    def of(cls, state: PersistedState) -> DurableImage:
        image = cls(hard=state.hard_state)
        if state.snapshot is not None:
            image.snapshot_index = state.snapshot.meta.index
            image.snapshot_term = state.snapshot.meta.term
        image.terms = {e.index: e.term for e in state.entries}
        return image

    def persisted(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        snapshot_replaces_log: bool,
    ) -> None:
        """Apply one persist, by the rules of :meth:`Storage.persist`."""
        self.persists += 1
        if snapshot is not None:
            index = snapshot.meta.index
            if snapshot_replaces_log:
                self.terms = {}
                self.installed_snapshots += 1
            else:
                self.terms = {i: t for i, t in self.terms.items() if i > index}
            self.snapshot_index, self.snapshot_term = index, snapshot.meta.term
        if entries:
            first = entries[0].index
            self.terms = {i: t for i, t in self.terms.items() if i < first}
            self.terms.update((e.index, e.term) for e in entries)
        if hard_state is not None:
            self.hard = hard_state

    @property
    def last_index(self) -> int:
        return max(self.terms, default=self.snapshot_index)

    def term_at(self, index: int) -> int | None:
        """The durable term at ``index``; None when unknown (compacted, or not stored)."""
        if index == self.snapshot_index:
            return self.snapshot_term
        return self.terms.get(index)


class ContractChecker:
    """Durable images of every node of a cluster, and the checks of what each one sends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: dict[str, DurableImage] = {}
        self._leader_logs: dict[int, dict[int, int]] = collections.defaultdict(dict)
        """term -> {index: entry term} as the leader of that term sent it (log matching)."""
        self.violations: list[str] = []
        self.checked: collections.Counter[str] = collections.Counter()
        """Messages checked, by kind: "vote", "campaign", "append ack", "snapshot ack", "term"."""

    # -- wiring --------------------------------------------------------------------------------

    def storage(self, inner: Storage, raft_id: str) -> CheckingStorage:
        return CheckingStorage(self, inner, raft_id)

    def transport(self, inner: Transport, raft_id: str) -> CheckingTransport:
        return CheckingTransport(self, inner, raft_id)

    def reply_receiver(self, raft_id: str) -> CheckedReplies:
        """The receiver of the replies node ``raft_id``'s HTTP transport gets inline: each is
        checked against its sender's disk, then handed to the node (set ``.node`` once made)."""
        return CheckedReplies(self, raft_id)

    def image(self, raft_id: str) -> DurableImage:
        """A copy of what ``raft_id``'s storage holds now."""
        with self._lock:
            image = self._images.get(raft_id, DurableImage())
            return DurableImage(
                image.hard,
                image.snapshot_index,
                image.snapshot_term,
                dict(image.terms),
                image.installed_snapshots,
                image.persists,
            )

    # -- what the wrappers report ------------------------------------------------------------

    def opened(self, raft_id: str, state: PersistedState) -> None:
        with self._lock:
            self._images[raft_id] = DurableImage.of(state)

    def persisted(self, raft_id: str, **persist: Any) -> None:
        with self._lock:
            image = self._images.setdefault(raft_id, DurableImage())
            if not persist.get("sync", True):
                self.checked["unsynced write"] += 1
                self._check_unsynced(raft_id, image, persist)
            image.persisted(
                persist["hard_state"],
                persist["entries"],
                persist["snapshot"],
                persist["snapshot_replaces_log"],
            )

    def sending(self, sender: str, messages: Sequence[Message]) -> None:
        """Check ``messages`` against ``sender``'s disk, before they leave."""
        with self._lock:
            image = self._images.get(sender)
            for m in messages:
                if isinstance(m, AppendEntries):
                    self._note_leader_log(m)
                if image is None:
                    self._violation(sender, m, "sent before its storage was opened")
                else:
                    self._check(sender, image, m)

    # -- the checks ----------------------------------------------------------------------------

    def _check_unsynced(self, raft_id: str, image: DurableImage, persist: dict[str, Any]) -> None:
        """Only a new commit index may be written without an fsync: a term, a vote, entries or
        a snapshot must survive a power loss (Raft forgets only the commit index)."""
        hard: HardState | None = persist["hard_state"]
        what = []
        if persist["entries"]:
            what.append(f"{len(persist['entries'])} entries")
        if persist["snapshot"] is not None:
            what.append("a snapshot")
        if hard is not None and (hard.term, hard.vote) != (image.hard.term, image.hard.vote):
            what.append(f"term {hard.term} and vote {hard.vote}")
        if what:
            text = f"{raft_id}: wrote {' and '.join(what)} without an fsync"
            self.violations.append(text)
            log.error("Ready contract violated: %s", text)

    def _note_leader_log(self, m: AppendEntries) -> None:
        known = self._leader_logs[m.term]
        if m.prev_index > 0:
            known[m.prev_index] = m.prev_term
        for entry in m.entries:
            known[entry.index] = entry.term

    def _check(self, sender: str, disk: DurableImage, m: Message) -> None:
        pre_vote = isinstance(m, (VoteRequest, VoteResponse)) and m.pre_vote
        if pre_vote:
            return  # a probe for a term nobody is in yet: changes and promises nothing
        self.checked["term"] += 1
        if disk.hard.term < m.term:
            self._violation(sender, m, f"sent in term {m.term} with term {disk.hard.term} on disk")
            return
        if disk.hard.term > m.term and isinstance(m, (VoteRequest, VoteResponse)):
            return  # a later term is on disk: the sender can never act in m.term again
        hard = (disk.hard.term, disk.hard.vote)
        if isinstance(m, VoteResponse) and m.granted:
            self.checked["vote"] += 1
            if hard != (m.term, m.to):
                self._violation(sender, m, f"granted a vote with {hard} on disk")
        elif isinstance(m, VoteRequest):
            self.checked["campaign"] += 1
            if hard != (m.term, sender):
                self._violation(sender, m, f"campaigned with {hard} on disk")
        elif isinstance(m, AppendResponse) and not m.reject:
            self.checked["append ack"] += 1
            if disk.last_index < m.index:
                self._violation(
                    sender, m, f"acknowledged up to {m.index} with {disk.last_index} on disk"
                )
                return
            expected = self._leader_logs.get(m.term, {}).get(m.index)
            stored = disk.term_at(m.index)
            if expected is not None and stored is not None and stored != expected:
                self._violation(
                    sender,
                    m,
                    f"acknowledged index {m.index}, whose entry on disk is of term {stored}, "
                    f"not {expected} as the leader of term {m.term} sent it",
                )
        elif isinstance(m, SnapshotResponse) and m.done and not m.reject:
            self.checked["snapshot ack"] += 1
            if max(disk.snapshot_index, disk.last_index) < m.index:
                self._violation(
                    sender,
                    m,
                    f"acknowledged a snapshot at {m.index} with snapshot {disk.snapshot_index} "
                    f"and log up to {disk.last_index} on disk",
                )

    def _violation(self, sender: str, m: Message, what: str) -> None:
        text = f"{sender}: {what}: {m!r}"
        self.violations.append(text)
        log.error("Ready contract violated: %s", text)

    def assert_clean(self) -> None:
        """Fail with every violation seen so far."""
        with self._lock:
            found = list(self.violations)
        assert not found, (
            f"{len(found)} message(s) left before the disk had what they promise:\n"
            + "\n".join(found[:20])
        )


class CheckingStorage(StorageWrapper):
    """A :class:`~catga_sync.storage.base.Storage` that tells its checker what became durable."""

    def __init__(self, checker: ContractChecker, inner: Storage, raft_id: str) -> None:
        super().__init__(inner)
        self.checker = checker
        self.raft_id = raft_id

    def open(self) -> PersistedState:
        state = self.inner.open()
        self.checker.opened(self.raft_id, state)
        return state

    def after_persist(self, **write: Any) -> None:
        self.checker.persisted(self.raft_id, **write)

    def describe(self) -> str:
        return f"{self.inner.describe()} (checked)"

    @property
    def image(self) -> DurableImage:
        """What this storage holds now, as far as the checker knows."""
        return self.checker.image(self.raft_id)


class CheckingTransport:
    """A :class:`~catga_sync.transport.base.Transport` that has every message checked against
    its sender's disk before handing it on. Anything else (``set_peers``, ``stats``...) goes to
    the wrapped transport."""

    def __init__(self, checker: ContractChecker, inner: Transport, raft_id: str) -> None:
        self.checker = checker
        self.inner = inner
        self.raft_id = raft_id
        self._closed = False

    def send(self, messages: Sequence[Message]) -> None:
        if not self._closed:
            self.checker.sending(self.raft_id, messages)
        self.inner.send(messages)

    def close(self) -> None:
        self._closed = True
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CheckedReplies:
    """Checks the messages a peer answered inline (they never passed its transport), then
    hands them to ``node``."""

    def __init__(self, checker: ContractChecker, raft_id: str) -> None:
        self._checker = checker
        self.raft_id = raft_id
        self.node: PeerReceiver | None = None

    def receive(self, messages: Sequence[Message], sender_name: str | None) -> None:
        if messages:
            self._checker.sending(messages[0].frm, messages)
        if self.node is not None:
            self.node.receive(messages, sender_name)
