"""The Raft core's vocabulary: log entries, persisted state, snapshots and peer messages.

Everything here is a frozen, slotted dataclass: values that can be shared between threads, compared
in tests and turned into JSON by :mod:`catga_sync.raft.codec`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NodeId = str


class EntryType(enum.Enum):
    """What a log entry carries."""

    NORMAL = "normal"
    """An application command (empty data: the leader's no-op at the start of its term)."""
    CONFIG = "config"
    """A membership change; its data is a :class:`ConfigChange` encoded by the codec."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: a command (or membership change) placed at ``index`` in ``term``."""

    index: int
    term: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    @property
    def size(self) -> int:
        """Bytes this entry counts for against the per-message byte cap: at least its size on
        the wire (base64 data inside a JSON object), so a capped message fits a body limit."""
        return 4 * ((len(self.data) + 2) // 3) + 96


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before the node answers anyone (§5.1, Figure 2 "persistent state").

    ``commit`` is persisted too, so a restarted node need not wait for the leader to re-apply.
    """

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Membership:
    """The voters and non-voting learners of a configuration."""

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()

    def __post_init__(self) -> None:
        overlap = self.voters & self.learners
        if overlap:
            raise ValueError(f"nodes {sorted(overlap)} cannot be both voter and learner")

    @property
    def nodes(self) -> frozenset[NodeId]:
        return self.voters | self.learners


class ConfigChangeType(enum.Enum):
    """The single-server changes of the Raft thesis §4.1, plus learners."""

    ADD_VOTER = "add_voter"
    """Add a voter, or promote a learner that has caught up."""
    ADD_LEARNER = "add_learner"
    """Add a non-voting member that receives the log and catches up."""
    REMOVE = "remove"
    """Remove a voter or learner (the leader itself included)."""


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One membership change: which node, and what happens to it."""

    type: ConfigChangeType
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log and which membership was in force there."""

    index: int
    term: int
    membership: Membership


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The application's state as of ``meta.index``; ``data`` is opaque to the core."""

    meta: SnapshotMeta
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the application has applied ``index``."""

    context: str
    index: int


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts the application cares about: this node's role and who leads."""

    role: Role
    leader_id: NodeId | None
    term: int


# --------------------------------------------------------------------------------------------
# Peer messages. Every message carries the sender's term, the sender and the recipient.


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """RequestVote (§5.2); with ``pre_vote`` the thesis §9.6 probe that changes no term.

    ``transfer`` marks a campaign started by TimeoutNow: it may depose a live leader (§3.10).
    """

    term: int
    frm: NodeId
    to: NodeId
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    frm: NodeId
    to: NodeId
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries (§5.3) carrying zero or more consecutive entries after ``prev_index``."""

    term: int
    frm: NodeId
    to: NodeId
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """The follower's answer. On success ``index`` is the last index now known to match.

    On a reject, ``index`` echoes the rejected ``prev_index`` and the hint lets the leader skip a
    whole term of conflicting entries at once (§5.3, "fast back-up"): ``hint_index`` is the
    follower's best guess for a matching index and ``hint_term`` the term there.
    """

    term: int
    frm: NodeId
    to: NodeId
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Keeps followers from campaigning and advances their commit index.

    ``context`` is non-empty when the leader is confirming its leadership for read-index reads.
    """

    term: int
    frm: NodeId
    to: NodeId
    commit: int
    context: str = ""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    frm: NodeId
    to: NodeId
    context: str = ""


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of a snapshot (§7), ``data`` starting at byte ``offset`` of the whole.

    ``checksum`` is the SHA-256 hex digest of the whole snapshot; the follower checks it once the
    last chunk (``done``) has arrived.
    """

    term: int
    frm: NodeId
    to: NodeId
    meta: SnapshotMeta
    offset: int
    data: bytes = field(repr=False)
    done: bool
    checksum: str


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """``offset`` is the next byte the follower wants; with ``done`` the snapshot is installed."""

    term: int
    frm: NodeId
    to: NodeId
    index: int
    offset: int
    done: bool = False
    reject: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer (§3.10): start an election now, without waiting or pre-voting."""

    term: int
    frm: NodeId
    to: NodeId


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index on behalf of its client (thesis §6.4)."""

    term: int
    frm: NodeId
    to: NodeId
    context: str


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """``index`` is the commit index to wait for; ``index == -1`` means the leader refused."""

    term: int
    frm: NodeId
    to: NodeId
    context: str
    index: int


Message = (
    VoteRequest
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    VoteRequest,
    VoteResponse,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)
