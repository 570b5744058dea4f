"""The Raft state machine of one node: pure, single-threaded, and deterministic.

It does no I/O and keeps no clock: a driver feeds it ``tick()`` (time), ``step(message)``
(the network) and ``propose(data)`` (clients), and collects what to persist, send and apply with
``ready()`` / ``advance(ready)`` (see :class:`~catga_sync.raft.ready.Ready` for the order).
Randomness comes from the ``random.Random`` it is given, so a seed replays a whole cluster.

A role is a pair of swapped handlers: only the ``_become_*`` methods set ``self._tick`` and
``self._step_role``. Comments cite the Raft paper (§) and Ongaro's thesis (thesis §).

What a person would want to read about (a campaign, an election won, a leader stepping down
and why, a new leader, a membership change, a snapshot) goes into ``Ready.events`` as a
:mod:`~catga_sync.raft.events` value; the driver logs it. Nothing on the path of a heartbeat or
a replicated entry makes one, so a steady cluster's Readies carry the shared empty tuple.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import (
    InvalidMessageError,
    LeadershipTransferError,
    MembershipChangeError,
    NoLeaderError,
    NotLeaderError,
    ProposalDroppedError,
)
from .codec import decode_config_entry, encode_config_entry
from .config import RaftConfig
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
from .log import RaftLog
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
from .progress import Progress, ProgressState
from .ready import PersistedState, Ready

_LEADER_MESSAGES = (AppendEntries, Heartbeat, InstallSnapshot)


@dataclass(slots=True)
class _PendingRead:
    """A read-index request waiting for a majority to confirm our leadership (thesis §6.4)."""

    index: int
    origin: NodeId | None
    context: str
    acks: set[NodeId] = field(default_factory=set)


@dataclass(slots=True)
class _IncomingSnapshot:
    meta: SnapshotMeta
    checksum: str
    data: bytearray


FAREWELL_ELECTIONS = 3
"""Election timeouts a leader goes on sending the log to a node it removed, until that node
holds the entry that removed it."""


class RaftCore:
    """One Raft node's consensus state. See the module docstring for how to drive it."""

    def __init__(
        self,
        config: RaftConfig,
        *,
        rng: random.Random,
        persisted: PersistedState | None = None,
    ) -> None:
        self.config = config
        self.id: NodeId = config.node_id
        self._rng = rng
        hard = persisted.hard_state if persisted else HardState()
        try:
            self.log = RaftLog(
                persisted.snapshot if persisted else None,
                persisted.entries if persisted else (),
                hard.commit,
            )
        except ValueError as exc:
            raise ValueError(
                f"cannot restart node {self.id!r} from its stored state: {exc}"
            ) from exc
        if config.applied:
            self.log.applied = min(max(config.applied, self.log.offset), self.log.committed)
        self.term = hard.term
        self.vote: NodeId | None = hard.vote
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        self.membership = self._membership_from_log(config.membership)

        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.lead_transferee: NodeId | None = None
        self._transfer_elapsed = 0
        self.pending_config_index = 0
        self._farewells: dict[NodeId, int] = {}
        """Nodes this leader removed, still sent the log until they hold the entry that removed
        them (then they never campaign), or for FAREWELL_ELECTIONS election timeouts: ticks
        left. Their progress stays in ``progress``; no quorum counts them (only voters)."""

        self._pending_reads: dict[str, _PendingRead] = {}
        self._read_rounds = 0
        self._reads_awaiting_commit: list[tuple[str, NodeId | None]] = []
        self._commit_hint = (0, 0)
        """(index, term) of an entry a leader said is committed, not in our log yet."""
        self._read_states: list[ReadState] = []
        self._messages: list[Message] = []
        self._early_messages: list[Message] = []
        self._events: list[RaftEvent] = []
        self._active_voters: tuple[NodeId, ...] = ()
        self._incoming_snapshot: _IncomingSnapshot | None = None
        self._apply_snapshot = False
        self._snapshot_checksum: tuple[int, str] = (-1, "")

        self._persisted_hard = hard
        self._reported_soft: SoftState | None = None
        self._reported_membership: Membership | None = None
        self._outstanding: Ready | None = None

        self._tick: Callable[[], None] = self._tick_election
        self._step_role: Callable[[Message], None] = self._step_follower
        self._become_follower(self.term, None)

    # ========================================================================================
    # The driver surface

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self._outstanding is not None:
            raise RuntimeError("tick() between ready() and advance()")
        self._tick()

    def ticks_until_due(self) -> int:
        """How many :meth:`tick` calls may pass before one does something (at least 1): the
        election timeout of a follower or candidate; the next heartbeat or quorum check of a
        leader. A driver may sleep that long instead of waking for every tick; it must then run
        the ticks that elapsed before it steps the messages that woke it (they only count, and a
        heartbeat resets the count after them; a vote request's answer depends on it)."""
        config = self.config
        if self._tick == self._tick_election:
            if not self.is_voter:
                return config.election_ticks  # it never campaigns: any bound will do
            return max(1, self.randomized_election_timeout - self.election_elapsed)
        if self._farewells or self.lead_transferee is not None:
            return 1  # counted down on every tick
        return max(
            1,
            min(
                config.heartbeat_ticks - self.heartbeat_elapsed,
                config.election_ticks - self.election_elapsed,
            ),
        )

    def step(self, message: Message) -> None:
        """Feed a message from a peer. Raises :class:`InvalidMessageError`, changing nothing,
        when the message is not addressed to this node or is internally inconsistent."""
        self._check_inbound(message)
        if message.term > self.term:
            if not self._accept_higher_term(message):
                return
        elif message.term < self.term:
            self._answer_stale(message)
            return
        if isinstance(message, VoteRequest):
            self._handle_vote_request(message)
        else:
            self._step_role(message)

    def propose(self, data: bytes) -> Entry:
        """Append a command to the leader's log; returns the entry (its index and term).

        The command is committed when an entry with this index *and term* is applied; another
        term at that index means it was lost to a new leader and may be retried.
        """
        return self.propose_many([data])[0]

    def propose_many(self, batch: Sequence[bytes]) -> list[Entry]:
        """Append several commands at once (one Ready, one fsync, one message per follower)."""
        self._check_can_propose()
        for data in batch:
            if not isinstance(data, bytes):
                raise TypeError(f"a proposal must be bytes, not {type(data).__name__}")
        entries = self._append(EntryType.NORMAL, list(batch))
        self._broadcast_append()
        return entries

    def propose_config_change(self, change: ConfigChange) -> Entry:
        """Propose a single-server membership change (thesis §4.1); it takes effect once
        appended. One change may be pending at a time."""
        self._check_can_propose()
        if self.pending_config_index > self.log.committed:
            raise MembershipChangeError(
                f"a membership change is already pending at index {self.pending_config_index}; "
                "wait until it commits"
            )
        if self.log.term(self.log.committed) != self.term:
            # Ongaro's fix to single-server changes: a new leader must first commit its no-op.
            raise MembershipChangeError(
                "this leader has not committed an entry in its term yet; retry shortly"
            )
        membership = self._apply_change(change)
        data = encode_config_entry(change, membership)
        entry = self._append(EntryType.CONFIG, [data])[0]
        self._broadcast_append()
        return entry

    def learn_commit(self, index: int, term: int) -> None:
        """A leader said the entry at ``index``, of ``term``, is committed (its answer to a
        proposal this node forwarded). Commit up to it as soon as our log holds that entry
        (now, or with the AppendEntries that brings it): by the Log Matching Property our log
        then equals the leader's up to ``index``. A follower learns its own command's commit
        this way without waiting for the leader's next AppendEntries. A leader ignores it."""
        if self.role is Role.LEADER or index <= self.log.committed:
            return
        if self.log.match_term(index, term):
            self.log.commit_to(index)
        elif index > self._commit_hint[0]:
            self._commit_hint = (index, term)

    def read_index(self, context: str) -> None:
        """Ask for a linearizable read; a :class:`ReadState` with ``context`` comes in a later
        Ready. Use contexts unique among this node's reads in flight. A read lost to a leader
        change is never answered: drivers time out and retry."""
        if not isinstance(context, str) or not context:
            raise ValueError("a read context must be a non-empty string")
        if self.role is Role.LEADER:
            self._leader_read_index(context, origin=None)
        elif self.leader_id is not None:
            self._send(ReadIndexRequest(self.term, self.id, self.leader_id, context))
        else:
            raise NoLeaderError()

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to ``target`` (thesis §3.10): catch it up, then send TimeoutNow.
        Proposals are refused meanwhile; the transfer aborts after an election timeout."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id) if self.leader_id else NoLeaderError()
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise LeadershipTransferError(
                f"cannot transfer leadership to {target!r}: it is not a voting member "
                f"(voters: {sorted(self.membership.voters)})"
            )
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self._transfer_elapsed = 0
        progress = self.progress[target]
        if progress.match == self.log.last_index:
            self._send(TimeoutNow(self.term, self.id, target), early=True)
        else:
            self._send_append(target)

    def most_up_to_date_voter(self) -> NodeId | None:
        """The other voter whose log matches ours furthest: the best transfer target."""
        if self.role is not Role.LEADER:
            return None
        others = [n for n in self.membership.voters if n != self.id]
        if not others:
            return None
        return max(sorted(others), key=lambda n: self.progress[n].match)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Take the application's snapshot of its state as of ``index`` (already applied) and
        drop the log at and below it. The snapshot comes back in the next Ready to persist."""
        if not isinstance(data, bytes):
            raise TypeError(f"snapshot data must be bytes, not {type(data).__name__}")
        if not self.log.offset < index <= self.log.applied:
            raise ValueError(
                f"cannot snapshot at index {index}: it must be above the current snapshot "
                f"({self.log.offset}) and already applied (applied {self.log.applied})"
            )
        term = self.log.term(index)
        assert term is not None
        snapshot = Snapshot(SnapshotMeta(index, term, self.membership_at(index)), data)
        self.log.compact(snapshot)
        self._events.append(SnapshotTaken(index, term, len(data)))
        return snapshot

    def membership_at(self, index: int) -> Membership:
        entry = self.log.last_config_entry(index)
        if entry is not None:
            return decode_config_entry(entry.data)[1]
        if self.log.snapshot is not None:
            return self.log.snapshot.meta.membership
        return self.config.membership

    def has_ready(self) -> bool:
        log = self.log
        hard = self._persisted_hard
        soft = self._reported_soft
        return bool(
            self._messages
            or self._early_messages
            or log.stable < log.last_index
            or log.applied < log.committed
            or self.term != hard.term
            or self.vote != hard.vote
            or log.committed != hard.commit
            or soft is None
            or self.role is not soft.role
            or self.leader_id != soft.leader_id
            or self.term != soft.term
            or self._read_states
            or log.unstable_snapshot is not None
            or self.membership is not self._reported_membership
            or self._events
        )

    def ready(self) -> Ready:
        """Collect the work accumulated since the last Ready; see :class:`Ready` for the order."""
        log = self.log
        hard = self._persisted_hard
        if (self.term, self.vote, log.committed) != (hard.term, hard.vote, hard.commit):
            new_hard: HardState | None = self._hard_state()
        else:
            new_hard = None
        soft = self._reported_soft
        if soft is None or (self.role, self.leader_id, self.term) != (
            soft.role,
            soft.leader_id,
            soft.term,
        ):
            soft = self._soft_state()
            new_soft: SoftState | None = soft
        else:
            new_soft = None
        snapshot = log.unstable_snapshot
        membership = self.membership
        committed = log.next_committed_entries(self.config.max_committed_bytes)
        if committed:
            self._note_config_changes(committed[0].index, committed[-1].index)
        if self._events:
            events: tuple[RaftEvent, ...] = tuple(self._events)
            self._events = []
        else:
            events = ()
        ready = Ready(
            hard_state=new_hard,
            soft_state=new_soft,
            entries=log.unstable_entries(),
            snapshot=snapshot,
            apply_snapshot=self._apply_snapshot and snapshot is not None,
            committed_entries=committed,
            messages=tuple(self._messages),
            early_messages=tuple(self._early_messages),
            read_states=tuple(self._read_states),
            membership=membership if membership != self._reported_membership else None,
            events=events,
        )
        self._messages = []
        self._early_messages = []
        self._read_states = []
        self._reported_soft = soft
        self._reported_membership = membership
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """Tell the core that ``ready`` was persisted, sent and applied."""
        if ready is not self._outstanding:
            raise ValueError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        if ready.hard_state is not None:
            self._persisted_hard = ready.hard_state
        if ready.snapshot is not None:
            if self.log.unstable_snapshot is ready.snapshot:
                self.log.unstable_snapshot = None
            if ready.apply_snapshot:
                self._apply_snapshot = False
                self.log.applied = max(self.log.applied, ready.snapshot.meta.index)
        if ready.committed_entries:
            self.log.applied_to(ready.committed_entries[-1].index)
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self.role is Role.LEADER and self.id in self.progress:
                # Our own copy counts towards a majority only once it is on disk (§10.2.1).
                if self.progress[self.id].maybe_update(self.log.stable) and self._maybe_commit():
                    if self.role is Role.LEADER:
                        self._broadcast_append()

    # -- introspection, for drivers and tests ------------------------------------------------

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def hard_state(self) -> HardState:
        return self._hard_state()

    @property
    def soft_state(self) -> SoftState:
        return self._soft_state()

    @property
    def is_voter(self) -> bool:
        return self.id in self.membership.voters

    # ========================================================================================
    # Roles

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self._tick = self._tick_election
        self._step_role = self._step_follower
        if leader is not None:
            self._events.append(LeaderSeen(leader, term))

    def _step_down(self, reason: StepDownReason, term: int, frm: NodeId | None) -> None:
        """A leader becomes a follower of ``term``; say why in the next Ready."""
        heard = self._active_voters if reason is StepDownReason.CHECK_QUORUM else ()
        self._events.append(SteppedDown(self.term, reason, frm, term, heard))
        self._become_follower(term, None)

    def _become_pre_candidate(self) -> None:
        # Thesis §9.6: no term change and no vote; only ask whether we could win.
        self.role = Role.PRE_CANDIDATE
        self.leader_id = None
        self.votes = {}
        self._randomize_election_timeout()
        self._tick = self._tick_election
        self._step_role = self._step_candidate

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._tick = self._tick_election
        self._step_role = self._step_candidate

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        self._tick = self._tick_heartbeat
        self._step_role = self._step_leader
        for node in self.membership.nodes | {self.id}:
            self.progress[node] = Progress(self.log.last_index + 1, self.config.max_inflight)
        self.progress[self.id].match = self.log.stable
        self.progress[self.id].become_replicate()
        # The config entries in an uncommitted tail may still be pending.
        last_config = self.log.last_config_entry(self.log.last_index)
        self.pending_config_index = last_config.index if last_config else 0
        # §5.4.2 / §8: a no-op of our own term lets us commit what earlier terms left behind.
        self._append(EntryType.NORMAL, [b""])
        self._broadcast_append()

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader_id = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomize_election_timeout()
        self.votes = {}
        self.progress = {}
        self._farewells = {}
        self.lead_transferee = None
        self._pending_reads = {}
        self._reads_awaiting_commit = []

    def _randomize_election_timeout(self) -> None:
        # §5.2: spread timeouts over [T, 2T) so that split votes are rare.
        ticks = self.config.election_ticks
        self.randomized_election_timeout = ticks + self._rng.randrange(ticks)

    # ========================================================================================
    # Time

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.is_voter and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._campaign()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self._farewells:
            self._count_down_farewells()
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_recently_active():
                # Thesis §6.2: a leader cut off from the majority steps down.
                self._step_down(StepDownReason.CHECK_QUORUM, self.term, None)
                return
        if self.lead_transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_ticks:
                self.lead_transferee = None  # thesis §3.10: abandon a transfer that stalls
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat("")

    # ========================================================================================
    # Elections (§5.2)

    def _campaign(self, *, transfer_from: NodeId | None = None) -> None:
        transfer = transfer_from is not None
        pre_vote = self.config.pre_vote and not transfer
        if pre_vote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        asking = tuple(sorted(self.membership.voters - {self.id}))
        self._events.append(CampaignStarted(term, pre_vote, asking, transfer_from))
        if self._poll(self.id, True, pre_vote):
            return
        for node in asking:
            self._send(
                VoteRequest(
                    term,
                    self.id,
                    node,
                    self.log.last_index,
                    self.log.last_term,
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def _poll(self, node: NodeId, granted: bool, pre_vote: bool) -> bool:
        """Count a vote; True when the campaign is decided (won or lost)."""
        self.votes.setdefault(node, granted)
        voters = self.membership.voters
        yes = sum(1 for n, g in self.votes.items() if g and n in voters)
        no = sum(1 for n, g in self.votes.items() if not g and n in voters)
        if yes >= self._quorum():
            if pre_vote:
                self._campaign_after_pre_vote()
            else:
                won = tuple(sorted(n for n, g in self.votes.items() if g and n in voters))
                self._events.append(ElectionWon(self.term, won))
                self._become_leader()
            return True
        if no >= self._quorum():
            refused = tuple(sorted(n for n, g in self.votes.items() if not g and n in voters))
            term = self.term + 1 if pre_vote else self.term
            self._events.append(ElectionLost(term, pre_vote, refused))
            self._become_follower(self.term, None)
            return True
        return False

    def _campaign_after_pre_vote(self) -> None:
        self._become_candidate()
        asking = tuple(sorted(self.membership.voters - {self.id}))
        self._events.append(CampaignStarted(self.term, False, asking))
        if self._poll(self.id, True, False):
            return
        for node in asking:
            self._send(
                VoteRequest(self.term, self.id, node, self.log.last_index, self.log.last_term)
            )

    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )
        # §5.4.1: only for a log at least as up to date as ours.
        up_to_date = self.log.is_up_to_date(m.last_log_index, m.last_log_term)
        if can_vote and up_to_date:
            self._send(VoteResponse(m.term, self.id, m.frm, granted=True, pre_vote=m.pre_vote))
            self._events.append(VoteCast(m.frm, m.term, m.pre_vote, granted=True))
            if not m.pre_vote:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(VoteResponse(self.term, self.id, m.frm, granted=False, pre_vote=m.pre_vote))
            if not up_to_date:
                why, other = VoteRefusal.LOG_BEHIND, None
            elif self.leader_id is not None:
                why, other = VoteRefusal.HAS_LEADER, self.leader_id
            else:
                why, other = VoteRefusal.VOTED, self.vote
            self._events.append(VoteCast(m.frm, m.term, m.pre_vote, False, why, other))

    def _accept_higher_term(self, m: Message) -> bool:
        """Handle a message from a later term; False when it must be ignored."""
        if isinstance(m, VoteRequest):
            in_lease = (
                self.config.check_quorum
                and self.leader_id is not None
                and self.election_elapsed < self.config.election_ticks
            )
            if in_lease and not m.transfer:
                # Thesis §4.2.3: we heard from a live leader recently, so we do not help depose it.
                refusal = VoteRefusal.LEADER_LEASE
                self._events.append(
                    VoteCast(m.frm, m.term, m.pre_vote, False, refusal, self.leader_id)
                )
                return False
            if m.pre_vote:
                return True  # a pre-vote never changes our term
        if isinstance(m, VoteResponse) and m.pre_vote and m.granted:
            return True  # granted for the term we would campaign in
        if self.role is Role.LEADER:
            transfer = m.frm == self.lead_transferee
            reason = StepDownReason.TRANSFER if transfer else StepDownReason.HIGHER_TERM
            self._events.append(SteppedDown(self.term, reason, m.frm, m.term))
        self._become_follower(m.term, m.frm if isinstance(m, _LEADER_MESSAGES) else None)
        return True

    def _answer_stale(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat)) and (
            self.config.check_quorum or self.config.pre_vote
        ):
            # A leader from an older term that cannot hear the new one: tell it our term so it
            # steps down (without this, pre-vote could leave it stranded as leader forever).
            self._send(AppendResponse(self.term, self.id, m.frm, index=0, reject=True))
        elif isinstance(m, VoteRequest) and m.pre_vote:
            self._send(VoteResponse(self.term, self.id, m.frm, granted=False, pre_vote=True))

    # ========================================================================================
    # Per-role message handling

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self._heard_from_leader(m.frm)
            self._handle_append(m)
        elif isinstance(m, Heartbeat):
            self._heard_from_leader(m.frm)
            self.log.commit_to(min(m.commit, self.log.last_index))
            self._send(HeartbeatResponse(self.term, self.id, m.frm, m.context))
        elif isinstance(m, InstallSnapshot):
            self._heard_from_leader(m.frm)
            self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self.is_voter:
                self._campaign(transfer_from=m.frm)
        elif isinstance(m, ReadIndexRequest):
            self._send(ReadIndexResponse(self.term, self.id, m.frm, m.context, -1))
        elif isinstance(m, ReadIndexResponse):
            if m.index >= 0:
                self._read_states.append(ReadState(m.context, m.index))

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, _LEADER_MESSAGES):
            # §5.2: a leader of our term exists; fall back and let it lead.
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif isinstance(m, VoteResponse):
            if m.pre_vote == (self.role is Role.PRE_CANDIDATE):
                self._poll(m.frm, m.granted, m.pre_vote)
        elif isinstance(m, ReadIndexRequest):
            self._send(ReadIndexResponse(self.term, self.id, m.frm, m.context, -1))

    def _step_leader(self, m: Message) -> None:
        progress = self.progress.get(m.frm)
        if isinstance(m, ReadIndexRequest):
            self._leader_read_index(m.context, origin=m.frm)
            return
        if progress is None:
            return  # not (or no longer) a member
        if isinstance(m, AppendResponse):
            progress.recent_active = True
            self._handle_append_response(m, progress)
        elif isinstance(m, HeartbeatResponse):
            progress.recent_active = True
            self._handle_heartbeat_response(m, progress)
        elif isinstance(m, SnapshotResponse):
            progress.recent_active = True
            self._handle_snapshot_response(m, progress)

    def _heard_from_leader(self, leader: NodeId) -> None:
        self.election_elapsed = 0
        if self.leader_id != leader:  # once per leader: this runs for every heartbeat
            self.leader_id = leader
            self._events.append(LeaderSeen(leader, self.term))

    # ========================================================================================
    # Log replication, follower side (§5.3)

    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self.log.committed:
            # Everything up to our commit index matches the leader's log (Leader Completeness).
            self._send(AppendResponse(self.term, self.id, m.frm, index=self.log.committed))
            return
        truncations = self.log.truncations
        last_new = self.log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last_new is not None:
            hint_index, hint_term = self._commit_hint
            if hint_index:
                if hint_index > self.log.committed and self.log.match_term(hint_index, hint_term):
                    self.log.commit_to(hint_index)
                if hint_index <= self.log.committed:
                    self._commit_hint = (0, 0)  # used, or passed by the leader's own commit
            if truncations != self.log.truncations or self.log.has_config_entry(m.entries):
                self._refresh_membership()
            self._send(AppendResponse(self.term, self.id, m.frm, index=last_new))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.prev_index, self.log.last_index), m.prev_term
        )
        self._send(
            AppendResponse(
                self.term,
                self.id,
                m.frm,
                index=m.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        incoming = self._incoming_snapshot
        same = incoming is not None and incoming.meta == m.meta and incoming.checksum == m.checksum
        if m.offset == 0:
            incoming = _IncomingSnapshot(m.meta, m.checksum, bytearray())
            self._incoming_snapshot = incoming
        elif not same or incoming is None or m.offset != len(incoming.data):
            expected = len(incoming.data) if same and incoming is not None else 0
            self._send(SnapshotResponse(self.term, self.id, m.frm, m.meta.index, offset=expected))
            return
        incoming.data += m.data
        if not m.done:
            self._send(
                SnapshotResponse(self.term, self.id, m.frm, m.meta.index, offset=len(incoming.data))
            )
            return
        self._incoming_snapshot = None
        data = bytes(incoming.data)
        if hashlib.sha256(data).hexdigest() != m.checksum:
            self._send(
                SnapshotResponse(self.term, self.id, m.frm, m.meta.index, offset=0, reject=True)
            )
            return
        self._restore(Snapshot(m.meta, data), m.frm)
        self._send(
            SnapshotResponse(
                self.term, self.id, m.frm, max(m.meta.index, self.log.committed), 0, done=True
            )
        )

    def _restore(self, snapshot: Snapshot, leader: NodeId) -> None:
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            return  # we already have (and committed) everything it holds
        if self.log.match_term(meta.index, meta.term):
            # Our log already holds the snapshot's last entry: fast-forward the commit only.
            self.log.commit_to(meta.index)
            return
        self.log.restore(snapshot)
        self._apply_snapshot = True
        self.membership = meta.membership
        self._events.append(SnapshotInstalled(meta.index, meta.term, len(snapshot.data), leader))

    # ========================================================================================
    # Log replication, leader side (§5.3, with etcd-io/raft's flow control)

    def _append(self, type_: EntryType, batch: list[bytes]) -> list[Entry]:
        first = self.log.last_index + 1
        entries = [Entry(first + k, self.term, data, type_) for k, data in enumerate(batch)]
        self.log.append(entries)
        if type_ is EntryType.CONFIG:
            self.pending_config_index = entries[-1].index
            self._refresh_membership()
        return entries

    def _broadcast_append(self) -> None:
        for node in sorted(self.progress):
            if node != self.id:
                self._send_append(node)

    def _send_append(self, to: NodeId, *, allow_empty: bool = True) -> bool:
        progress = self.progress[to]
        if progress.is_paused():
            return False
        prev_index = progress.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            self._start_snapshot(to, progress)
            return True
        entries = self.log.slice(
            progress.next, self.log.last_index + 1, self.config.max_entries_bytes
        )
        if not entries and not allow_empty:
            return False
        if (
            entries
            and progress.state is ProgressState.REPLICATE  # so these entries are new to it
            and 2 * self.heartbeat_elapsed >= self.config.heartbeat_ticks
        ):
            progress.late_append = entries[-1].index
        self._send(
            AppendEntries(
                self.term, self.id, to, prev_index, prev_term, entries, self.log.committed
            ),
            early=True,
        )
        progress.sent_entries(entries[-1].index if entries else prev_index)
        if entries and progress.state is ProgressState.PROBE:
            progress.probe_sent = True
        return True

    def _count_down_farewells(self) -> None:
        for node, left in list(self._farewells.items()):
            if left <= 1:
                self._say_farewell(node)
            else:
                self._farewells[node] = left - 1

    def _say_farewell(self, node: NodeId) -> None:
        del self._farewells[node]
        self.progress.pop(node, None)

    def _handle_append_response(self, m: AppendResponse, progress: Progress) -> None:
        if m.reject:
            hint = m.hint_index
            if m.hint_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if progress.maybe_decrease_to(m.index, hint):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(m.frm)
            return
        was_paused = progress.is_paused()
        if progress.late_append is not None and m.index >= progress.late_append:
            progress.appended = True  # it got an append sent late in the interval
        if not progress.maybe_update(m.index):
            return
        if m.frm in self._farewells and progress.match >= self.pending_config_index:
            self._say_farewell(m.frm)  # it holds its removal: it will not campaign
            return
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif (
            progress.state is ProgressState.SNAPSHOT and progress.match >= progress.pending_snapshot
        ):
            progress.become_probe()
            progress.become_replicate()
        if self._maybe_commit():
            if self.role is not Role.LEADER:
                return  # we were removed from the configuration and stepped down
            self._broadcast_append()
        elif was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, allow_empty=False):
            pass  # pipeline: keep the window full
        if m.frm == self.lead_transferee and progress.match == self.log.last_index:
            self._send(TimeoutNow(self.term, self.id, m.frm), early=True)

    def heartbeat_answer_can_wait(self, m: Message) -> bool:
        """Whether ``m`` answers a plain heartbeat of this leader's term from a follower whose
        progress is as it should be (replicating, up to date, not paused, not taking over):
        stepping it then only marks the follower active for check-quorum, so a driver may
        step it at its next wake-up instead of waking for it. It only reads, so another
        thread may ask; what a read that raced the driver lets wait is stepped a heartbeat
        later at most."""
        if self.role is not Role.LEADER or type(m) is not HeartbeatResponse:
            return False
        if m.term != self.term or m.context or m.frm == self.lead_transferee:
            return False
        progress = self.progress.get(m.frm)
        return (
            progress is not None
            and progress.state is ProgressState.REPLICATE
            and progress.match == self.log.last_index
            and not progress.is_paused()
        )

    def _handle_heartbeat_response(self, m: HeartbeatResponse, progress: Progress) -> None:
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.is_paused():
            progress.inflight.popleft()  # a response went missing; let one more through
        if progress.state is ProgressState.SNAPSHOT:
            if not m.context:  # periodic heartbeats only: a read's rounds would count faster
                progress.snapshot_waits += 1
            if progress.snapshot_waits * self.config.heartbeat_ticks >= self.config.election_ticks:
                self._send_snapshot_chunk(m.frm, progress)  # the chunk it awaits was lost
        elif progress.match < self.log.last_index:
            self._send_append(m.frm)
        if m.frm == self.lead_transferee and progress.match == self.log.last_index:
            # TimeoutNow is a single message; if it was lost, ask again rather than let the
            # transfer time out (a follower that is already campaigning ignores a repeat).
            self._send(TimeoutNow(self.term, self.id, m.frm), early=True)
        if m.context and m.context in self._pending_reads:
            self._pending_reads[m.context].acks.add(m.frm)
            self._release_confirmed_reads(m.context)

    def _start_snapshot(self, to: NodeId, progress: Progress) -> None:
        snapshot = self.log.snapshot
        assert snapshot is not None, "a compacted log always has a snapshot"
        progress.become_snapshot(snapshot.meta.index)
        self._events.append(SnapshotSent(to, snapshot.meta.index, len(snapshot.data)))
        self._send_snapshot_chunk(to, progress)

    def _send_snapshot_chunk(self, to: NodeId, progress: Progress) -> None:
        snapshot = self.log.snapshot
        assert snapshot is not None
        if snapshot.meta.index != progress.pending_snapshot:
            progress.become_snapshot(snapshot.meta.index)  # we compacted again meanwhile
        if self._snapshot_checksum[0] != snapshot.meta.index:
            self._snapshot_checksum = (
                snapshot.meta.index,
                hashlib.sha256(snapshot.data).hexdigest(),
            )
        offset = progress.snapshot_offset
        progress.snapshot_waits = 0
        chunk = snapshot.data[offset : offset + self.config.snapshot_chunk_bytes]
        self._send(
            InstallSnapshot(
                self.term,
                self.id,
                to,
                snapshot.meta,
                offset,
                chunk,
                done=offset + len(chunk) >= len(snapshot.data),
                checksum=self._snapshot_checksum[1],
            ),
            early=True,
        )

    def _handle_snapshot_response(self, m: SnapshotResponse, progress: Progress) -> None:
        if progress.state is not ProgressState.SNAPSHOT:
            return
        if m.done:
            progress.match = max(progress.match, m.index)
            progress.become_probe()
            self._send_append(m.frm)
            return
        if m.index != progress.pending_snapshot:
            return
        if not m.reject and m.offset == progress.snapshot_offset:
            # A second answer for a chunk sent twice (once again after a timeout): the chunk
            # it asks for is on its way already; answering every answer would double the
            # stream for good. A loss is the retransmit timer's to mend.
            return
        progress.snapshot_offset = 0 if m.reject else m.offset
        self._send_snapshot_chunk(m.frm, progress)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a majority of voters hold (§5.3, §5.4.2)."""
        voters = self.membership.voters
        matches = sorted(
            (self.progress[n].match for n in voters if n in self.progress), reverse=True
        )
        quorum = self._quorum()
        if len(matches) < quorum:
            return False
        if not self.log.maybe_commit(matches[quorum - 1], self.term):
            return False
        self._on_commit_advanced()
        return True

    def _on_commit_advanced(self) -> None:
        if self._reads_awaiting_commit and self.log.term(self.log.committed) == self.term:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for context, origin in waiting:
                self._leader_read_index(context, origin)
        if (
            self.id not in self.membership.voters
            and self.pending_config_index <= self.log.committed
        ):
            # Thesis §4.2.2: a leader removed from the configuration steps down once the change
            # commits; hand over at once so the cluster does not wait an election timeout.
            successor = self.most_up_to_date_voter()
            if successor is not None:
                self._send(TimeoutNow(self.term, self.id, successor), early=True)
            self._step_down(StepDownReason.REMOVED, self.term, successor)

    def _broadcast_heartbeat(self, context: str) -> None:
        """Heartbeat every follower; a periodic one (no read context) skips a follower that
        acknowledged new entries sent to it in the second half of the interval: that
        AppendEntries, sent at most half an interval ago, reset its election timer when it
        arrived, however long the follower then took to persist and answer. So it hears from
        us at least every 1.5 heartbeat intervals (the election timeout is more than two), and
        under a stream of commands the followers get appends, not heartbeats. A lost
        AppendEntries gets no acknowledgement, so its follower's heartbeat still goes (and its
        answer makes the leader send again)."""
        for node in sorted(self.progress):
            if node == self.id:
                continue
            progress = self.progress[node]
            if not context:
                skip, progress.appended, progress.late_append = progress.appended, False, None
                if skip:
                    continue
            commit = min(progress.match, self.log.committed)
            self._send(Heartbeat(self.term, self.id, node, commit, context), early=True)

    def _quorum_recently_active(self) -> bool:
        """Whether a majority of voters was heard from since the last check (once per election
        timeout); who was is kept for the step-down event."""
        active: list[NodeId] = []
        for node in self.membership.voters:
            progress = self.progress.get(node)
            if node == self.id or (progress is not None and progress.recent_active):
                active.append(node)
            if progress is not None and node != self.id:
                progress.recent_active = False
        self._active_voters = tuple(sorted(active))
        return len(active) >= self._quorum()

    def _quorum(self) -> int:
        return len(self.membership.voters) // 2 + 1

    # ========================================================================================
    # Linearizable reads (thesis §6.4)

    def _leader_read_index(self, context: str, origin: NodeId | None) -> None:
        if self.log.term(self.log.committed) != self.term:
            # A new leader does not know the commit index until its own no-op commits.
            self._reads_awaiting_commit.append((context, origin))
            return
        if self.membership.voters <= {self.id}:
            self._answer_read(context, self.log.committed, origin)
            return
        # Thesis §6.4 step 3: only heartbeats sent after the index was recorded may confirm it,
        # so each round gets its own token; the caller's context might be reused or shared.
        self._read_rounds += 1
        token = f"{self.term}.{self._read_rounds}"
        read = _PendingRead(self.log.committed, origin, context)
        if self.id in self.membership.voters:
            read.acks.add(self.id)
        self._pending_reads[token] = read
        self._broadcast_heartbeat(token)

    def _release_confirmed_reads(self, token: str) -> None:
        read = self._pending_reads[token]
        if len(read.acks & self.membership.voters) < self._quorum():
            return
        # Confirming leadership for this round confirms it for every earlier one too.
        for each in list(self._pending_reads):
            earlier = self._pending_reads.pop(each)
            self._answer_read(earlier.context, earlier.index, earlier.origin)
            if each == token:
                break

    def _answer_read(self, context: str, index: int, origin: NodeId | None) -> None:
        if origin is None or origin == self.id:
            self._read_states.append(ReadState(context, index))
        else:
            self._send(ReadIndexResponse(self.term, self.id, origin, context, index))

    # ========================================================================================
    # Membership (thesis §4.1)

    def _apply_change(self, change: ConfigChange) -> Membership:
        voters, learners = set(self.membership.voters), set(self.membership.learners)
        node = change.node_id
        if not isinstance(node, str) or not node:
            raise MembershipChangeError("a membership change needs a non-empty node id")
        if change.type is ConfigChangeType.ADD_VOTER:
            if node in voters:
                raise MembershipChangeError(f"{node!r} is already a voter")
            if node in learners:
                match = self.progress[node].match if node in self.progress else 0
                if match < self.log.committed:
                    raise MembershipChangeError(
                        f"learner {node!r} has not caught up (it holds index {match}, "
                        f"commit is {self.log.committed}); promote it once it has"
                    )
                learners.discard(node)
            voters.add(node)
        elif change.type is ConfigChangeType.ADD_LEARNER:
            if node in voters:
                raise MembershipChangeError(f"{node!r} is a voter; remove it first to demote it")
            if node in learners:
                raise MembershipChangeError(f"{node!r} is already a learner")
            learners.add(node)
        else:
            if node not in voters and node not in learners:
                raise MembershipChangeError(f"{node!r} is not a member")
            if voters == {node}:
                raise MembershipChangeError(f"cannot remove {node!r}, the last voter")
            voters.discard(node)
            learners.discard(node)
        return Membership(frozenset(voters), frozenset(learners))

    def _membership_from_log(self, initial: Membership) -> Membership:
        entry = self.log.last_config_entry(self.log.last_index)
        if entry is not None:
            return decode_config_entry(entry.data)[1]
        if self.log.snapshot is not None:
            return self.log.snapshot.meta.membership
        return initial

    def _refresh_membership(self) -> None:
        """Recompute the configuration after the log changed: the latest one in it is in force,
        committed or not (thesis §4.1), so a truncated change is undone here too."""
        membership = self._membership_from_log(self.config.membership)
        if membership == self.membership:
            return
        self.membership = membership
        if self.role is not Role.LEADER:
            return
        for node in membership.nodes:
            if self._farewells.pop(node, None) is not None:
                # Removed, then added back: perhaps a new process with empty storage under the
                # old endpoint, so what the old one held says nothing about it.
                del self.progress[node]
            if node not in self.progress:
                self.progress[node] = Progress(self.log.last_index + 1, self.config.max_inflight)
        for node in list(self.progress):
            if node not in membership.nodes and node != self.id and node not in self._farewells:
                # The log (which tells it of its removal, so it never campaigns) goes on to it
                # until it holds the change: one last append could be lost. Sent at once even
                # to a follower whose probe is paused, from what it is known to hold.
                self._farewells[node] = FAREWELL_ELECTIONS * self.config.election_ticks
                self.progress[node].become_probe()
                self._send_append(node)
        if self.lead_transferee is not None and self.lead_transferee not in membership.voters:
            self.lead_transferee = None
        self._maybe_commit()

    def _note_config_changes(self, first: int, last: int) -> None:
        """Report each membership change among the committed entries ``first..last``, handed to
        the driver in this Ready (one bisect, and nothing when there is none)."""
        for index in self.log.config_indexes_between(first, last):
            change, membership = decode_config_entry(self.log.entry(index).data)
            self._events.append(ConfigChangeApplied(index, change, membership))

    # ========================================================================================
    # Plumbing

    def _send(self, message: Message, *, early: bool = False) -> None:
        (self._early_messages if early else self._messages).append(message)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader_id, self.term)

    def _check_can_propose(self) -> None:
        if self._outstanding is not None:
            raise RuntimeError("propose() between ready() and advance()")
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id) if self.leader_id else NoLeaderError()
        if self.lead_transferee is not None:
            raise ProposalDroppedError(
                f"leadership is being transferred to {self.lead_transferee!r}; "
                "retry on the new leader"
            )

    def _check_inbound(self, m: Message) -> None:
        if m.to != self.id:
            raise InvalidMessageError(f"message addressed to {m.to!r} delivered to {self.id!r}")
        if m.frm == self.id:
            raise InvalidMessageError(f"message from {m.frm!r} to itself")
        if self._outstanding is not None:
            raise RuntimeError("step() between ready() and advance()")
        if isinstance(m, AppendEntries):
            expected = m.prev_index + 1
            for entry in m.entries:
                if entry.index != expected or entry.term > m.term:
                    raise InvalidMessageError(
                        f"AppendEntries from {m.frm!r} carries entry {entry.index} (term "
                        f"{entry.term}) where index {expected} of term ≤ {m.term} was due"
                    )
                expected += 1
