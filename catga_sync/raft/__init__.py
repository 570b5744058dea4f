"""The Raft consensus core: a pure state machine, with no I/O of its own.

Nothing under ``catga_sync.raft`` touches threads, sockets, files, databases, the clock or the
global random generator; it imports only the standard library and :mod:`catga_sync.errors`
(``tests/test_purity.py`` keeps it so). Time arrives as :meth:`RaftCore.tick`, messages as
:meth:`RaftCore.step`, randomness as an injected ``random.Random``; the work to do leaves as a
:class:`Ready`. This is the shape of etcd-io/raft and of h11's "sans-I/O" protocol libraries,
and it is what lets :mod:`catga_sync.testing` replay thousands of cluster schedules a minute.
"""

from __future__ import annotations

from .codec import decode_message, encode_message, message_from_dict, message_to_dict
from .config import RaftConfig
from .core import RaftCore
from .events import (
    CampaignStarted,
    ConfigChangeApplied,
    ElectionLost,
    ElectionWon,
    LeaderSeen,
    RaftEvent,
    SnapshotInstalled,
    SnapshotSent,
    SnapshotTaken,
    StepDownReason,
    SteppedDown,
    VoteCast,
    VoteRefusal,
)
from .messages import (
    AppendEntries,
    AppendResponse,
    ConfigChange,
    ConfigChangeType,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    NodeId,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SnapshotResponse,
    SoftState,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .ready import PersistedState, Ready

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "CampaignStarted",
    "ConfigChange",
    "ConfigChangeApplied",
    "ConfigChangeType",
    "ElectionLost",
    "ElectionWon",
    "Entry",
    "EntryType",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "LeaderSeen",
    "Membership",
    "Message",
    "NodeId",
    "PersistedState",
    "RaftConfig",
    "RaftCore",
    "RaftEvent",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotInstalled",
    "SnapshotMeta",
    "SnapshotResponse",
    "SnapshotSent",
    "SnapshotTaken",
    "SoftState",
    "StepDownReason",
    "SteppedDown",
    "TimeoutNow",
    "VoteCast",
    "VoteRefusal",
    "VoteRequest",
    "VoteResponse",
    "decode_message",
    "encode_message",
    "message_from_dict",
    "message_to_dict",
]
