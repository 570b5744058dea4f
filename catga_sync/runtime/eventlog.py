"""The Raft loop's log lines: the core's events, messages, slow writes (``docs/logging.rst``).

The Raft core reports what happened in ``Ready.events`` (:mod:`catga_sync.raft.events`) and
never logs; the loop hands each batch's events to :class:`EventLog`, which writes one line per
event on the ``catga_sync.raft`` logger: INFO for the story of the cluster (campaigns, elections
won and lost, leaders stepping down and seen, membership changes, snapshots), DEBUG for votes.
:func:`describe_message` renders one peer message for the DEBUG lines of
``catga_sync.raft.messages``.

The clock lives here, not in the core: "won the election in 45 ms" is measured from the first
campaign this node started since it last had a leader, on the monotonic clock. A node that
cannot reach a majority campaigns every election timeout; its first campaign of each kind is at
INFO, the repeats at DEBUG with a reminder at INFO every :data:`REMINDER_SECONDS`, so an
isolated node writes a line every few seconds rather than several a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from ..raft import (
    CampaignStarted,
    ConfigChangeApplied,
    ConfigChangeType,
    ElectionLost,
    ElectionWon,
    Entry,
    LeaderSeen,
    Message,
    RaftEvent,
    SnapshotInstalled,
    SnapshotMeta,
    SnapshotSent,
    SnapshotTaken,
    StepDownReason,
    SteppedDown,
    VoteCast,
    VoteRefusal,
)

__all__ = ["REMINDER_SECONDS", "SLOW_WRITE_REPEAT", "EventLog", "SlowWrites", "describe_message"]

log = logging.getLogger("catga_sync.raft")
message_log = logging.getLogger("catga_sync.raft.messages")
node_log = logging.getLogger("catga_sync.node")

REMINDER_SECONDS = 10.0
"""How often a node that keeps campaigning without a leader says so at INFO."""

SLOW_WRITE_REPEAT = 60.0
"""Seconds between two WARNING lines about slow writes (the ones between are counted)."""

_CHANGES = {
    ConfigChangeType.ADD_VOTER: "added voter",
    ConfigChangeType.ADD_LEARNER: "added learner",
    ConfigChangeType.REMOVE: "removed",
}


class EventLog:
    """Writes the events of one node's Readies as log lines (see the module docstring).

    ``name_of`` turns a Raft id (an endpoint) into the node's name when it is known;
    ``clock`` is injected for the tests.
    """

    def __init__(
        self,
        node_id: str,
        name_of: Callable[[str | None], str | None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self._name_of = name_of
        self._clock = clock
        self._leaderless_since: float | None = None
        """When this node started campaigning (or stepped down) with no leader since."""
        self._campaigns = 0
        self._pre_voted = False
        self._kinds_told: set[bool] = set()
        """The campaign kinds (pre-vote or not) already said at INFO in this stretch."""
        self._told_at = 0.0
        self._campaign_level = logging.INFO
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            CampaignStarted: self._campaign_started,
            ElectionWon: self._election_won,
            ElectionLost: self._election_lost,
            SteppedDown: self._stepped_down,
            LeaderSeen: self._leader_seen,
            VoteCast: self._vote_cast,
            ConfigChangeApplied: self._config_change_applied,
            SnapshotTaken: self._snapshot_taken,
            SnapshotSent: self._snapshot_sent,
            SnapshotInstalled: self._snapshot_installed,
        }

    def report(self, events: Iterable[RaftEvent]) -> None:
        for event in events:
            self._handlers[type(event)](event)

    # -- elections ------------------------------------------------------------------------------

    def _campaign_started(self, e: CampaignStarted) -> None:
        now = self._clock()
        if self._leaderless_since is None:
            self._leaderless_since = now
        if e.pre_vote or not self._pre_voted:
            self._campaigns += 1  # a pre-vote and the vote it wins are one campaign
        self._pre_voted = e.pre_vote
        kind = "pre-candidate" if e.pre_vote else "candidate"
        what = "pre-votes" if e.pre_vote else "votes"
        told = e.pre_vote in self._kinds_told
        if e.transfer_from is not None or not told or now - self._told_at >= REMINDER_SECONDS:
            level = logging.INFO
            self._kinds_told.add(e.pre_vote)
            self._told_at = now
        else:
            level = logging.DEBUG
        self._campaign_level = level
        if e.transfer_from is not None:
            why = f" (leadership transfer from {self._name(e.transfer_from)})"
        elif self._campaigns > 1:
            since = now - self._leaderless_since
            why = f" (campaign {self._campaigns}, no leader for {_seconds(since)})"
        else:
            why = ""
        log.log(
            level,
            "node %s became %s for term %d, asking %s for %s%s",
            self.node_id,
            kind,
            e.term,
            self._names(e.asking) or "nobody (the only voter)",
            what,
            why,
        )

    def _election_won(self, e: ElectionWon) -> None:
        took = ""
        if self._leaderless_since is not None:
            took = f" in {_seconds(self._clock() - self._leaderless_since)}"
            if self._campaigns > 1:
                took += f", after {self._campaigns} campaigns"
        log.info(
            "node %s won the election for term %d with votes from %s%s",
            self.node_id,
            e.term,
            self._names(e.votes_from),
            took,
        )
        self._have_leader()

    def _election_lost(self, e: ElectionLost) -> None:
        log.log(
            self._campaign_level,
            "node %s lost the %s for term %d: refused by %s",
            self.node_id,
            "pre-vote" if e.pre_vote else "election",
            e.term,
            self._names(e.refused_by),
        )

    def _stepped_down(self, e: SteppedDown) -> None:
        other = self._name(e.from_node)
        if e.reason is StepDownReason.HIGHER_TERM:
            why = f"{other} has a higher term ({e.new_term})"
        elif e.reason is StepDownReason.CHECK_QUORUM:
            others = [n for n in map(self._name, e.heard_from) if n != self.node_id]
            why = (
                "check-quorum lost: no majority of voters answered within an election timeout "
                f"(heard from: {', '.join(others) or 'none'})"
            )
        elif e.reason is StepDownReason.TRANSFER:
            why = f"leadership transferred to {other} (term {e.new_term})"
        else:
            why = "removed from the membership"
            if e.from_node is not None:
                why += f", handing over to {other}"
        log.info("node %s stepped down as leader of term %d: %s", self.node_id, e.term, why)
        self._leaderless_since = self._clock()
        self._campaigns = 0
        self._pre_voted = False

    def _leader_seen(self, e: LeaderSeen) -> None:
        without = ""
        if self._leaderless_since is not None:
            without = f" (no leader for {_seconds(self._clock() - self._leaderless_since)})"
        log.info(
            "node %s follows %s, leader of term %d%s",
            self.node_id,
            self._name(e.leader),
            e.term,
            without,
        )
        self._have_leader()

    def _have_leader(self) -> None:
        self._leaderless_since = None
        self._campaigns = 0
        self._pre_voted = False
        self._kinds_told = set()

    def _vote_cast(self, e: VoteCast) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        vote = "pre-vote" if e.pre_vote else "vote"
        candidate = self._name(e.candidate)
        if e.granted:
            log.debug(
                "node %s granted its %s to %s for term %d", self.node_id, vote, candidate, e.term
            )
            return
        if e.refusal is VoteRefusal.LEADER_LEASE:
            leader = self._name(e.other)
            lease = (
                "it is the leader"
                if leader == self.node_id
                else f"it heard from leader {leader} within the election timeout"
            )
            log.debug(
                "node %s ignored the %s request of %s for term %d: %s (leader lease)",
                self.node_id,
                vote,
                candidate,
                e.term,
                lease,
            )
            return
        if e.refusal is VoteRefusal.LOG_BEHIND:
            why = f"the log of {candidate} is behind its own"
        elif e.refusal is VoteRefusal.HAS_LEADER:
            why = f"it follows {self._name(e.other)}"
        else:
            why = f"it voted for {self._name(e.other)}"
        log.debug(
            "node %s refused its %s to %s for term %d: %s",
            self.node_id,
            vote,
            candidate,
            e.term,
            why,
        )

    # -- membership and snapshots ----------------------------------------------------------------

    def _config_change_applied(self, e: ConfigChangeApplied) -> None:
        log.info(
            "node %s applied a membership change at index %d: %s %s; voters: %s; learners: %s",
            self.node_id,
            e.index,
            _CHANGES[e.change.type],
            self._name(e.change.node_id),
            self._names(sorted(e.membership.voters)) or "none",
            self._names(sorted(e.membership.learners)) or "none",
        )

    def _snapshot_taken(self, e: SnapshotTaken) -> None:
        log.info(
            "node %s took a snapshot at index %d (term %d, %d bytes) and compacted its log",
            self.node_id,
            e.index,
            e.term,
            e.size,
        )

    def _snapshot_sent(self, e: SnapshotSent) -> None:
        log.info(
            "node %s sends its snapshot at index %d (%d bytes) to %s, whose log is behind it",
            self.node_id,
            e.index,
            e.size,
            self._name(e.to),
        )

    def _snapshot_installed(self, e: SnapshotInstalled) -> None:
        log.info(
            "node %s installed a snapshot from %s at index %d (term %d, %d bytes)",
            self.node_id,
            self._name(e.leader),
            e.index,
            e.term,
            e.size,
        )

    # -- messages and names --------------------------------------------------------------------

    def messages(self, direction: str, messages: Iterable[Message]) -> None:
        """DEBUG lines on ``catga_sync.raft.messages``: ``->`` sent, ``<-`` received."""
        for m in messages:
            peer = self._name(m.to if direction == "->" else m.frm)
            message_log.debug(
                "node %s %s %s: %s", self.node_id, direction, peer, describe_message(m)
            )

    def _name(self, raft_id: str | None) -> str:
        if raft_id is None:
            return "?"
        name = self._name_of(raft_id) if self._name_of is not None else None
        return name or raft_id

    def _names(self, raft_ids: Iterable[str]) -> str:
        return ", ".join(self._name(r) for r in raft_ids)


class SlowWrites:
    """Says on ``catga_sync.node`` that the storage is slow: a write that took ``threshold``
    seconds or more is a WARNING, then one a minute with the count, DEBUG in between."""

    def __init__(
        self, node_id: str, threshold: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.node_id = node_id
        self.threshold = threshold
        self._clock = clock
        self._count = 0
        self._warned_at: float | None = None

    def note(self, took: float) -> None:
        self._count += 1
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < SLOW_WRITE_REPEAT:
            node_log.debug("node %s: a write to storage took %.0f ms", self.node_id, took * 1000)
            return
        since = "" if self._warned_at is None else f" ({self._count} since the last)"
        node_log.warning(
            "node %s: a write to storage took %.0f ms, over half the election timeout "
            "(%.0f ms): the node cannot tick or answer meanwhile, so expect elections%s",
            self.node_id,
            took * 1000,
            self.threshold * 2000,
            since,
        )
        self._warned_at = now
        self._count = 0


def describe_message(message: Message) -> str:
    """One peer message on one line: its type and fields, entries and bytes summarized."""
    parts = []
    for f in fields(message):
        if f.name in ("frm", "to"):
            continue
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            text = f"<{len(value)} bytes>"
        elif isinstance(value, tuple) and value and isinstance(value[0], Entry):
            text = f"[{value[0].index}..{value[-1].index}]"
        elif isinstance(value, SnapshotMeta):
            text = f"(index={value.index}, term={value.term})"
        else:
            text = repr(value) if isinstance(value, str) else str(value)
        parts.append(f"{f.name}={text}")
    return f"{type(message).__name__}({', '.join(parts)})"


def _seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
