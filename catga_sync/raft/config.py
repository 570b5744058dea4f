"""Tunables of one Raft core, in ticks and bytes (the node turns durations into ticks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .messages import Membership, NodeId


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """How one core behaves. Only ``node_id`` and ``membership`` have no default.

    ``membership`` is the configuration a fresh cluster starts with; once the log or a snapshot
    holds a membership change, that wins.
    """

    node_id: NodeId
    membership: Membership
    election_ticks: int = 10
    """Election timeout T in ticks; each term's timeout is drawn from [T, 2T)."""
    heartbeat_ticks: int = 1
    """A leader sends heartbeats every this many ticks."""
    pre_vote: bool = True
    """Thesis §9.6: probe before campaigning, so a rejoining node does not raise the term."""
    check_quorum: bool = True
    """Thesis §6.2: a leader that hears from no majority for an election timeout steps down."""
    max_entries_bytes: int = 1 << 20
    """Byte cap on the entries of one AppendEntries (at least one entry is always sent)."""
    max_inflight: int = 256
    """AppendEntries messages in flight to one healthy follower (pipelining window)."""
    max_committed_bytes: int = 8 << 20
    """Byte cap on the committed entries handed to the application in one Ready."""
    snapshot_chunk_bytes: int = 512 << 10
    """Size of one InstallSnapshot chunk."""
    applied: int = field(default=0)
    """Index the application has already applied when restarting (0: from the snapshot)."""

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ConfigError("node_id must be a non-empty string")
        if self.election_ticks <= self.heartbeat_ticks or self.heartbeat_ticks < 1:
            raise ConfigError(
                f"election_ticks ({self.election_ticks}) must exceed heartbeat_ticks "
                f"({self.heartbeat_ticks}), which must be at least 1"
            )
        for name in ("max_entries_bytes", "max_inflight", "max_committed_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.snapshot_chunk_bytes < 1:
            raise ConfigError("snapshot_chunk_bytes must be at least 1")
        if self.applied < 0:
            raise ConfigError("applied must not be negative")
