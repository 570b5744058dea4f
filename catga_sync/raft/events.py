"""What happened inside the core, for people: elections, leaders, membership, snapshots.

The core does not log (it does no I/O). Instead it appends one of these plain values to the
next :class:`~catga_sync.raft.Ready` (``Ready.events``) when something a person following the
cluster would want to know happens, and the driver decides what to do with it: the runtime
logs each as one line (:mod:`catga_sync.runtime.eventlog`, ``docs/logging.rst``), the simulator
records them for tests. None is ever made per heartbeat or per replicated entry, so a steady
cluster produces none and ``Ready.events`` stays the shared empty tuple.

Events carry facts the core knows (terms, node ids, indexes), never times: the core has no
clock, and "how long did the election take" is measured by the driver, which sees
:class:`CampaignStarted` and :class:`ElectionWon` arrive on its own clock (ticks would only
bound it: a driver that was paused runs at most an election timeout of ticks to catch up, and
persisting the votes takes real time no tick counts).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .messages import ConfigChange, Membership, NodeId


class StepDownReason(enum.Enum):
    """Why a leader stopped leading."""

    HIGHER_TERM = "higher_term"
    """A message from a later term arrived (``from_node`` sent it): another node campaigned or
    leads."""
    CHECK_QUORUM = "check_quorum"
    """No majority of voters answered within an election timeout (thesis §6.2)."""
    TRANSFER = "transfer"
    """It handed leadership to ``from_node`` (thesis §3.10), which campaigned and won."""
    REMOVED = "removed"
    """The change that removed it from the voters committed (thesis §4.2.2)."""


class VoteRefusal(enum.Enum):
    """Why a node did not grant a (pre-)vote."""

    LOG_BEHIND = "log_behind"
    """The candidate's log is less up to date than ours (§5.4.1)."""
    VOTED = "voted"
    """We already voted for ``other`` in this term (§5.2)."""
    HAS_LEADER = "has_leader"
    """We follow ``other`` in this term."""
    LEADER_LEASE = "leader_lease"
    """We heard from a leader within the election timeout: the request is ignored, unanswered
    (thesis §4.2.3)."""


@dataclass(frozen=True, slots=True)
class CampaignStarted:
    """This node timed out (or was told to take over) and asks for votes."""

    term: int
    """The term it campaigns for (a pre-vote asks for ``term`` without moving to it)."""
    pre_vote: bool
    """True for the pre-vote round (thesis §9.6): no term change yet, only "could I win?"."""
    asking: tuple[NodeId, ...]
    """The other voters it asks, sorted."""
    transfer_from: NodeId | None = None
    """The leader that handed leadership over (TimeoutNow), when this is a transfer."""


@dataclass(frozen=True, slots=True)
class ElectionWon:
    """This node became the leader of ``term``."""

    term: int
    votes_from: tuple[NodeId, ...]
    """The voters that granted their vote, this node included, sorted."""


@dataclass(frozen=True, slots=True)
class ElectionLost:
    """A majority of voters refused this node's (pre-)vote request; it is a follower again."""

    term: int
    pre_vote: bool
    refused_by: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class SteppedDown:
    """This node stopped leading ``term``."""

    term: int
    """The term it led."""
    reason: StepDownReason
    from_node: NodeId | None
    """The node with the higher term, or the transfer target; None otherwise."""
    new_term: int
    """Its term now (``term`` unless a higher term deposed it)."""
    heard_from: tuple[NodeId, ...] = ()
    """For check-quorum: the voters it did hear from in the last election timeout (itself
    included)."""


@dataclass(frozen=True, slots=True)
class LeaderSeen:
    """This node now follows ``leader`` in ``term`` (once per leader and term, and again after
    the node lost track of it, e.g. during a pre-vote that came to nothing)."""

    leader: NodeId
    term: int


@dataclass(frozen=True, slots=True)
class VoteCast:
    """This node answered (or ignored) a vote request. The runtime logs it at DEBUG."""

    candidate: NodeId
    term: int
    pre_vote: bool
    granted: bool
    refusal: VoteRefusal | None = None
    """Why it refused (None when it granted)."""
    other: NodeId | None = None
    """The node it voted for, or the leader it follows, when that is why it refused."""


@dataclass(frozen=True, slots=True)
class ConfigChangeApplied:
    """A membership change committed and is handed to the driver to apply."""

    index: int
    change: ConfigChange
    membership: Membership
    """The configuration the change produced."""


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    """The driver compacted the log up to ``index`` with a snapshot of ``size`` bytes."""

    index: int
    term: int
    size: int


@dataclass(frozen=True, slots=True)
class SnapshotSent:
    """The leader starts sending its snapshot to ``to``, whose log is behind its own snapshot."""

    to: NodeId
    index: int
    size: int


@dataclass(frozen=True, slots=True)
class SnapshotInstalled:
    """A snapshot received from ``leader`` replaced this node's log; the driver restores it."""

    index: int
    term: int
    size: int
    leader: NodeId


RaftEvent = (
    CampaignStarted
    | ElectionWon
    | ElectionLost
    | SteppedDown
    | LeaderSeen
    | VoteCast
    | ConfigChangeApplied
    | SnapshotTaken
    | SnapshotSent
    | SnapshotInstalled
)
"""Every event the core reports in ``Ready.events``."""
