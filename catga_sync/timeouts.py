"""Every wait a node derives from its configuration, computed in one place."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Timeouts"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every wait a node derives from its configuration, in seconds, computed in one place
    (:attr:`ClusterConfig.timeouts`) so that no module re-derives them with its own constant.
    ``T`` below is the election timeout."""

    tick: float
    """The core's unit of time (:attr:`ClusterConfig.tick`)."""
    election: float
    """T."""
    heartbeat: float
    """The leader's heartbeat interval; also the period of the scheduler's pacemaker job."""
    peer_request: float
    """A peer request (Raft RPC, a forwarded proposal, a relayed view): T, at least 0.1 s."""
    call: float
    """Default wait of a command, a read barrier or a call on the Raft loop: 20 T, at least
    5 s (an election or two, and a slow disk)."""
    read_index_retry: float
    """A read-index request unanswered this long is asked again: 2 T, at least 0.2 s."""
    hand_off: float
    """How long a stopping leader waits for its successor: 2 T + 0.5 s."""
    confirm_leadership: float
    """Default wait of ``TaskContext.confirm_leadership``: 4 T, at least 0.5 s."""
    job_barrier: float
    """Default wait of a gated job's read barrier and of its record: 20 T, at least 2 s."""
    commit_notice_delay: float = 0.002
    """How long a leader holds a commit notice back for an AppendEntries to carry it."""

    @classmethod
    def of(cls, election: timedelta, heartbeat: timedelta, tick: timedelta) -> Timeouts:
        t = election.total_seconds()
        return cls(
            tick=tick.total_seconds(),
            election=t,
            heartbeat=heartbeat.total_seconds(),
            peer_request=max(t, 0.1),
            call=max(5.0, 20 * t),
            read_index_retry=max(2 * t, 0.2),
            hand_off=2 * t + 0.5,
            confirm_leadership=max(0.5, 4 * t),
            job_barrier=max(2.0, 20 * t),
        )
