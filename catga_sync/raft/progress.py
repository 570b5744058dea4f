"""What a leader knows about each follower's log, and how fast it may send to it.

A follower is in one of three states (etcd-io/raft's flow control):

- PROBE: we do not know where its log matches ours; send one AppendEntries at a time and wait.
- REPLICATE: it is healthy; send optimistically, up to ``max_inflight`` messages in flight.
- SNAPSHOT: it is behind our compacted log; send snapshot chunks, nothing else.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "appended",
        "inflight",
        "late_append",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_offset",
        "snapshot_waits",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = True
        self.late_append: int | None = None
        """The last index of new entries sent to it in the second half of this heartbeat
        interval (None: none were)."""
        self.appended = False
        """It acknowledged those entries: it got an AppendEntries sent in the second half of
        the interval, so this round's heartbeat is not needed (see
        ``RaftCore._broadcast_heartbeat``)."""
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.snapshot_waits = 0
        """Heartbeat answers since the last snapshot chunk went out unanswered: a chunk is
        sent again only after an election timeout's worth of them (it was lost), not on each
        one — a large chunk can take longer than a heartbeat interval to be answered, and
        resending it on every heartbeat piled up copies faster than they were answered."""
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.value}, "
            f"inflight={len(self.inflight)})"
        )

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.snapshot_offset = 0

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def sent_entries(self, last_index: int) -> None:
        """Record an AppendEntries carrying entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index``; True when it taught us something new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, hint_index: int) -> bool:
        """A rejection of ``prev_index == rejected``; False when it is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint_index + 1), self.match + 1)
        self.probe_sent = False
        return True
