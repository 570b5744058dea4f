"""A deterministic, in-process Raft cluster for tests: yours and ours.

:class:`SimulatedCluster` runs N :class:`~catga_sync.raft.RaftCore` instances in one thread
over a simulated network with per-link delay, loss, duplication and reordering, partitions
(isolate, split, one-way, bridge), and crashes that lose whatever a node had not persisted.
Everything random flows from one seed, so a failing schedule replays exactly.

After every event the simulator checks Raft's safety properties (Figure 3 of the paper) and
raises :class:`InvariantViolation` naming the seed:

- *election safety*: at most one leader per term;
- *log matching*: entries with the same index and term have identical prefixes;
- *leader completeness*: a leader holds every entry committed in earlier terms;
- *state machine safety*: every node applies the same entry at a given index;
- term, vote and commit never go backwards on a node, across restarts too;
- nothing is acknowledged (vote granted, entries or snapshot accepted) before it is persisted.

Test your own state machine by passing ``state_machine=YourClass``: anything with
``apply(index, data)``, ``snapshot() -> bytes`` and ``restore(data)``. Run
``python -m catga_sync.testing demo`` for a guided tour, ``… fuzz --seeds 1000`` for a soak and
``… replay SEED`` to print the schedule of one seed.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import random
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from .errors import CatgaError
from .raft import (
    AppendResponse,
    ConfigChange,
    ConfigChangeType,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    PersistedState,
    RaftConfig,
    RaftCore,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotResponse,
    VoteRequest,
    VoteResponse,
)

__all__ = [
    "InvariantViolation",
    "LinkFaults",
    "ListStateMachine",
    "SimStateMachine",
    "SimulatedCluster",
    "run_random",
]


class InvariantViolation(AssertionError):
    """A Raft safety property was broken; the message names the seed to replay."""


class SimStateMachine(Protocol):
    """What the simulator needs from an application state machine."""

    def apply(self, index: int, data: bytes) -> object: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class ListStateMachine:
    """The simplest state machine: the list of commands applied, in order."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, index: int, data: bytes) -> object:
        self.items.append(data)
        return len(self.items)

    def snapshot(self) -> bytes:
        return json.dumps([base64.b64encode(i).decode() for i in self.items]).encode()

    def restore(self, data: bytes) -> None:
        self.items = [base64.b64decode(i) for i in json.loads(data)]


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How one directed link misbehaves. Delays are in ticks; a random delay reorders."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay: tuple[int, int] = (0, 0)


# --------------------------------------------------------------------------------------------
# One simulated node: a core, its "disk", and its state machine.


@dataclass
class _Disk:
    """What survives a crash: exactly what the Ready contract told the driver to persist."""

    hard: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    snapshot_hash: int = 0
    entries: list[Entry] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    """hashes[k] fingerprints the whole log prefix ending at entries[k] (log matching)."""

    @property
    def offset(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def state(self) -> PersistedState:
        return PersistedState(self.hard, self.snapshot, tuple(self.entries))


@dataclass
class _Node:
    id: str
    config: RaftConfig
    core: RaftCore | None
    disk: _Disk
    machine: SimStateMachine
    applied: list[tuple[int, int]] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.core is not None


# --------------------------------------------------------------------------------------------


class SimulatedCluster:
    """N Raft cores, a network and a clock, all in one thread and all seeded.

    Time moves only in :meth:`step` (one tick for every live node, then every message that is
    due is delivered) and the helpers built on it.
    """

    def __init__(
        self,
        nodes: int | Sequence[str] = 3,
        *,
        seed: int = 0,
        state_machine: Callable[[], SimStateMachine] = ListStateMachine,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        ready_lag: float = 0.0,
        trace: int = 400,
        **raft_options: int,
    ) -> None:
        ids = [f"n{k}" for k in range(nodes)] if isinstance(nodes, int) else list(nodes)
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0
        self.ready_lag = ready_lag
        self._state_machine = state_machine
        self._base = RaftConfig(
            node_id=ids[0],
            membership=Membership(frozenset(ids)),
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            **raft_options,
        )
        self.nodes: dict[str, _Node] = {}
        for node_id in ids:
            self._add(node_id, self._base.membership)
        self._in_flight: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._blocked: set[tuple[str, str]] = set()
        self._faults: dict[tuple[str, str], LinkFaults] = {}
        self.default_faults = LinkFaults()
        self._trace: deque[tuple[int, str, object]] = deque(maxlen=trace)
        # Cluster-wide facts for the invariants.
        self._leader_of_term: dict[int, str] = {}
        self._prefix_hash: dict[tuple[int, int], int] = {}
        self._committed: dict[int, tuple[int, int, int]] = {}
        self._applied: dict[int, tuple[int, bytes]] = {}
        self.delivered = 0
        self.dropped = 0

    # -- building ------------------------------------------------------------------------------

    def _add(self, node_id: str, membership: Membership) -> _Node:
        config = replace(self._base, node_id=node_id, membership=membership)
        node = _Node(node_id, config, None, _Disk(), self._state_machine())
        self.nodes[node_id] = node
        node.core = RaftCore(config, rng=random.Random(self.rng.getrandbits(64)))
        return node

    def add_node(self, node_id: str) -> None:
        """Start a brand-new, empty node that knows no members: it waits to be added through a
        membership change and learns the configuration from the leader."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id!r} exists")
        self._add(node_id, Membership(frozenset()))

    # -- looking -------------------------------------------------------------------------------

    def core(self, node_id: str) -> RaftCore:
        core = self.nodes[node_id].core
        if core is None:
            raise ValueError(f"node {node_id!r} is crashed")
        return core

    def alive(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.alive]

    def leaders(self) -> list[str]:
        return [n for n in self.alive() if self.core(n).role is Role.LEADER]

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        leaders = self.leaders()
        return max(leaders, key=lambda n: self.core(n).term) if leaders else None

    def applied(self, node_id: str) -> list[bytes]:
        """Commands node ``node_id`` applied, in order (with the default state machine)."""
        machine = self.nodes[node_id].machine
        assert isinstance(machine, ListStateMachine)
        return list(machine.items)

    def machine(self, node_id: str) -> SimStateMachine:
        return self.nodes[node_id].machine

    def read_states(self, node_id: str) -> list[ReadState]:
        return self.nodes[node_id].read_states

    def trace(self, last: int = 60) -> str:
        lines = [f"  t={t:<5} {who:<6} {what}" for t, who, what in list(self._trace)[-last:]]
        return "\n".join(lines)

    # -- the network ---------------------------------------------------------------------------

    def set_faults(
        self,
        *,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[int, int] = (0, 0),
        link: tuple[str, str] | None = None,
    ) -> None:
        """Set faults for one directed link, or for every link without its own setting."""
        faults = LinkFaults(drop, duplicate, delay)
        if link is None:
            self.default_faults = faults
        else:
            self._faults[link] = faults

    def isolate(self, node_id: str) -> None:
        """Cut every link to and from ``node_id``."""
        for other in self.nodes:
            if other != node_id:
                self._blocked |= {(node_id, other), (other, node_id)}
        self._note("net", f"isolate {node_id}")

    def split(self, *groups: Iterable[str]) -> None:
        """Partition into groups that only hear each other (unlisted nodes form one more)."""
        sets = [set(g) for g in groups]
        rest = set(self.nodes) - set().union(*sets)
        if rest:
            sets.append(rest)
        side = {n: k for k, g in enumerate(sets) for n in g}
        self._blocked |= {(a, b) for a in self.nodes for b in self.nodes if side[a] != side[b]}
        self._note("net", f"split {[sorted(g) for g in sets]}")

    def one_way(self, frm: str, to: str) -> None:
        """Drop messages from ``frm`` to ``to`` but not the other way."""
        self._blocked.add((frm, to))
        self._note("net", f"one-way cut {frm}->{to}")

    def bridge(self, left: Iterable[str], right: Iterable[str], via: str) -> None:
        """Split into ``left`` and ``right``, with ``via`` hearing and heard by both sides."""
        left_set, right_set = set(left) - {via}, set(right) - {via}
        self._blocked |= {(a, b) for a in left_set for b in right_set}
        self._blocked |= {(b, a) for a in left_set for b in right_set}
        self._note("net", f"bridge {sorted(left_set)} <-{via}-> {sorted(right_set)}")

    def heal(self) -> None:
        """Remove every partition (link faults stay)."""
        self._blocked.clear()
        self._note("net", "heal")

    def connected(self, frm: str, to: str) -> bool:
        return (frm, to) not in self._blocked

    def _send(self, sender: _Node, message: Message) -> None:
        self._check_acknowledged_is_persisted(sender, message)
        faults = self._faults.get((message.frm, message.to), self.default_faults)
        rng = self.rng
        if faults.drop and rng.random() < faults.drop:
            self.dropped += 1
            return
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        for _ in range(copies):
            low, high = faults.delay
            delay = rng.randint(low, high) if high else 0
            self._seq += 1
            heapq.heappush(self._in_flight, (self.now + delay, self._seq, message))

    def _deliver_due(self) -> None:
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= self.now:
            message = heapq.heappop(in_flight)[2]
            node = self.nodes.get(message.to)
            if node is None or node.core is None or (message.frm, message.to) in self._blocked:
                self.dropped += 1
                continue
            self.delivered += 1
            node.core.step(message)
            self._maybe_handle_ready(node)

    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- time ----------------------------------------------------------------------------------

    def step(self) -> None:
        """One tick: tick every live node, deliver every due message, handle what is ready."""
        self.now += 1
        for node in self.nodes.values():
            if node.core is not None:
                node.core.tick()
                self._maybe_handle_ready(node)
        self._deliver_due()
        for node in self.nodes.values():
            self._maybe_handle_ready(node)

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.step()

    def run_until(self, predicate: Callable[[], bool], *, max_ticks: int = 1000) -> int:
        """Step until ``predicate()`` holds; returns the ticks taken, or raises TimeoutError."""
        for ticks in range(max_ticks + 1):
            self.flush()
            if predicate():
                return ticks
            self.step()
        raise TimeoutError(
            f"condition not reached in {max_ticks} ticks (seed {self.seed})\n{self.trace()}"
        )

    def wait_for_leader(self, max_ticks: int = 1000) -> str:
        """Step until exactly one live node leads the highest term among live nodes."""

        def settled() -> bool:
            leader = self.leader()
            if leader is None:
                return False
            core = self.core(leader)
            reachable = set(self.reachable_from(leader))
            if len(reachable & core.membership.voters) <= len(core.membership.voters) // 2:
                return False  # a stranded old leader that has not stepped down yet
            return all(self.core(n).term <= core.term for n in reachable)

        self.run_until(settled, max_ticks=max_ticks)
        leader = self.leader()
        assert leader is not None
        return leader

    def flush(self) -> None:
        """Handle every pending Ready now (no time passes, nothing is delivered)."""
        for node in self.nodes.values():
            self._handle_ready(node)

    # -- clients -------------------------------------------------------------------------------

    def propose(self, data: bytes, node_id: str | None = None) -> Entry:
        """Propose on ``node_id`` (default: the leader); raises what the core raises."""
        target = node_id or self.leader()
        if target is None:
            raise CatgaError(f"no leader to propose to at t={self.now}")
        entry = self.core(target).propose(data)
        self._note(target, f"propose {entry.index}/{entry.term} {data[:24]!r}")
        self._maybe_handle_ready(self.nodes[target])
        return entry

    def is_committed(self, entry: Entry, nodes: Iterable[str] | None = None) -> bool:
        """True once ``entry`` (index and term) is applied on every given live node."""
        for node_id in nodes if nodes is not None else self.alive():
            node = self.nodes[node_id]
            if node.core is None:
                continue
            applied = self._applied.get(entry.index)
            if node.core.applied_index < entry.index or applied is None:
                return False
            if applied[0] != entry.term:
                return False
        return True

    def lost(self, entry: Entry) -> bool:
        """True once another entry was applied at ``entry.index``: the proposal is gone."""
        applied = self._applied.get(entry.index)
        return applied is not None and applied[0] != entry.term

    def reachable_from(self, node_id: str) -> list[str]:
        """Live members that ``node_id`` can reach and hear from (itself included)."""
        members = self.core(node_id).membership.nodes | {node_id}
        return [
            n
            for n in self.alive()
            if n == node_id
            or (n in members and self.connected(node_id, n) and self.connected(n, node_id))
        ]

    def commit(self, data: bytes, *, max_ticks: int = 2000) -> Entry:
        """Propose ``data`` to the leader and step until every live node in touch with the
        leader applied it; a proposal lost to a leader change is proposed again."""
        for _ in range(50):
            leader = self.wait_for_leader(max_ticks)
            try:
                entry = self.propose(data, leader)
            except CatgaError:
                self.step()
                continue
            group = self.reachable_from(leader)
            try:
                self.run_until(
                    lambda: self.is_committed(entry, group) or self.lost(entry),  # noqa: B023
                    max_ticks=max_ticks,
                )
            except TimeoutError:
                continue
            if not self.lost(entry):
                return entry
        raise TimeoutError(f"could not commit {data!r} (seed {self.seed})\n{self.trace()}")

    def read_index(self, node_id: str, context: str) -> None:
        self.core(node_id).read_index(context)
        self._maybe_handle_ready(self.nodes[node_id])

    def transfer_leadership(self, target: str, leader: str | None = None) -> None:
        source = leader or self.leader()
        if source is None:
            raise CatgaError("no leader")
        self.core(source).transfer_leadership(target)
        self._note(source, f"transfer leadership to {target}")
        self._maybe_handle_ready(self.nodes[source])

    def change_membership(self, change_type: ConfigChangeType, node_id: str) -> Entry:
        leader = self.leader()
        if leader is None:
            raise CatgaError("no leader")
        entry = self.core(leader).propose_config_change(ConfigChange(change_type, node_id))
        self._note(leader, f"config {change_type.value} {node_id} at {entry.index}")
        self._maybe_handle_ready(self.nodes[leader])
        return entry

    def compact(self, node_id: str) -> Snapshot:
        """Snapshot ``node_id``'s state machine at its applied index and compact its log."""
        node = self.nodes[node_id]
        core = self.core(node_id)
        self._handle_ready(node)
        snapshot = core.compact(core.applied_index, node.machine.snapshot())
        self._note(node_id, f"compact at {snapshot.meta.index}")
        self._handle_ready(node)
        return snapshot

    # -- failures ------------------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        """Stop ``node_id`` at once: what it had not persisted is lost."""
        node = self.nodes[node_id]
        node.core = None
        node.read_states = []
        self._note(node_id, "CRASH")

    def restart(self, node_id: str) -> None:
        """Start ``node_id`` again from its disk, with its state machine rebuilt from there."""
        node = self.nodes[node_id]
        if node.core is not None:
            raise ValueError(f"{node_id} is running")
        node.machine = self._state_machine()
        if node.disk.snapshot is not None:
            node.machine.restore(node.disk.snapshot.data)
        node.core = RaftCore(
            node.config,
            rng=random.Random(self.rng.getrandbits(64)),
            persisted=node.disk.state(),
        )
        self._note(node_id, f"RESTART term={node.disk.hard.term} log={node.disk.last_index}")

    # -- the driver: the Ready contract, with the invariants checked along the way --------------

    def _maybe_handle_ready(self, node: _Node) -> None:
        if self.ready_lag and self.rng.random() < self.ready_lag:
            return  # the disk is slow: this node's work waits (a crash now loses it)
        self._handle_ready(node)

    def _handle_ready(self, node: _Node) -> None:
        core = node.core
        while core is not None and core.has_ready():
            ready = core.ready()
            if ready.soft_state is not None:
                self._on_soft_state(node, core, ready)
            for message in ready.early_messages:
                self._send(node, message)
            self._persist(node, ready)
            for message in ready.messages:
                self._send(node, message)
            self._apply(node, ready)
            node.read_states.extend(ready.read_states)
            core.advance(ready)

    def _persist(self, node: _Node, ready: Ready) -> None:
        disk = node.disk
        if ready.hard_state is not None:
            self._check_hard_state(node, ready.hard_state)
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            if ready.apply_snapshot:
                base = self._prefix_hash.get((meta.index, meta.term))
                if base is None:
                    self._violation(
                        node.id,
                        f"received a snapshot at {meta.index}/{meta.term} that no node ever logged",
                    )
                disk.entries, disk.hashes = [], []
                disk.snapshot_hash = base or 0
            else:
                keep = meta.index - disk.offset
                disk.snapshot_hash = disk.hashes[keep - 1] if keep > 0 else disk.snapshot_hash
                disk.entries, disk.hashes = disk.entries[keep:], disk.hashes[keep:]
            disk.snapshot = ready.snapshot
        if ready.entries:
            first = ready.entries[0].index
            keep = first - 1 - disk.offset
            if keep < 0 or keep > len(disk.entries):
                self._violation(
                    node.id,
                    f"persisting entries from {first} onto a log {disk.offset}..{disk.last_index}",
                )
            del disk.entries[keep:], disk.hashes[keep:]
            previous = disk.hashes[-1] if disk.hashes else disk.snapshot_hash
            for entry in ready.entries:
                previous = hash((previous, entry.index, entry.term, entry.type, entry.data))
                known = self._prefix_hash.setdefault((entry.index, entry.term), previous)
                if known != previous:
                    self._violation(
                        node.id,
                        f"log matching: entry {entry.index}/{entry.term} "
                        "follows a different prefix than on another node",
                    )
                disk.entries.append(entry)
                disk.hashes.append(previous)
        if ready.hard_state is not None:
            self._register_commit(node, disk.hard.commit, ready.hard_state)
            disk.hard = ready.hard_state
            if disk.hard.commit > disk.last_index:
                self._violation(
                    node.id,
                    f"persisted commit {disk.hard.commit} beyond its "
                    f"persisted log ({disk.last_index})",
                )

    def _apply(self, node: _Node, ready: Ready) -> None:
        if ready.apply_snapshot and ready.snapshot is not None:
            node.machine.restore(ready.snapshot.data)
            self._note(node.id, f"restore snapshot {ready.snapshot.meta.index}")
        for entry in ready.committed_entries:
            first = self._applied.setdefault(entry.index, (entry.term, entry.data))
            if first != (entry.term, entry.data):
                self._violation(
                    node.id,
                    f"state machine safety: applied {entry.index}/"
                    f"{entry.term} where another node applied {first[0]}",
                )
            if entry.type is EntryType.NORMAL and entry.data:
                node.machine.apply(entry.index, entry.data)

    # -- invariants ----------------------------------------------------------------------------

    def _on_soft_state(self, node: _Node, core: RaftCore, ready: Ready) -> None:
        soft = ready.soft_state
        assert soft is not None
        self._note(node.id, f"{soft.role.value} term={soft.term} leader={soft.leader_id}")
        if soft.role is not Role.LEADER:
            return
        holder = self._leader_of_term.setdefault(soft.term, node.id)
        if holder != node.id:
            self._violation(node.id, f"election safety: {holder} already leads term {soft.term}")
        log = core.log
        for index in range(log.offset + 1, max(self._committed, default=0) + 1):
            committed = self._committed.get(index)
            if committed and committed[2] < soft.term and log.term(index) != committed[0]:
                self._violation(
                    node.id,
                    f"leader completeness: leader of term {soft.term} "
                    f"lacks entry {index}/{committed[0]} committed earlier",
                )

    def _check_hard_state(self, node: _Node, new: HardState) -> None:
        old = node.disk.hard
        if new.term < old.term:
            self._violation(node.id, f"term went back from {old.term} to {new.term}")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            self._violation(
                node.id, f"vote changed from {old.vote} to {new.vote} in term {new.term}"
            )
        if new.commit < old.commit:
            self._violation(node.id, f"commit went back from {old.commit} to {new.commit}")

    def _register_commit(self, node: _Node, old_commit: int, hard: HardState) -> None:
        disk = node.disk
        for index in range(max(old_commit, disk.offset) + 1, hard.commit + 1):
            k = index - disk.offset - 1
            if k >= len(disk.entries):
                break
            fact = (disk.entries[k].term, disk.hashes[k], hard.term)
            known = self._committed.setdefault(index, fact)
            if known[:2] != fact[:2]:
                self._violation(node.id, f"two different entries committed at index {index}")

    def _check_acknowledged_is_persisted(self, node: _Node, m: Message) -> None:
        disk = node.disk
        if (
            isinstance(m, (VoteRequest, VoteResponse))
            and not m.pre_vote
            and disk.hard.term > m.term
        ):
            return  # a later term is on disk: this node can never act in m.term again
        if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
            if (disk.hard.term, disk.hard.vote) != (m.term, m.to):
                self._violation(
                    node.id, f"granted a vote to {m.to} in term {m.term} before persisting it"
                )
        elif isinstance(m, VoteRequest) and not m.pre_vote:
            if (disk.hard.term, disk.hard.vote) != (m.term, node.id):
                self._violation(
                    node.id, f"asked for votes in term {m.term} before persisting its own"
                )
        elif isinstance(m, AppendResponse) and not m.reject:
            if disk.last_index < m.index or disk.hard.term < m.term:
                self._violation(
                    node.id,
                    f"acknowledged entries up to {m.index} with only {disk.last_index} persisted",
                )
        elif isinstance(m, SnapshotResponse) and m.done:
            if max(disk.offset, disk.last_index) < m.index:
                self._violation(node.id, f"acknowledged snapshot {m.index} before persisting it")

    def _violation(self, who: str, what: str) -> None:
        raise InvariantViolation(
            f"{what} (node {who}, t={self.now}, seed {self.seed}); replay with "
            f"`python -m catga_sync.testing replay {self.seed}`\nlast events:\n{self.trace()}"
        )

    def _note(self, who: str, what: object) -> None:
        self._trace.append((self.now, who, what))

    # -- convergence ---------------------------------------------------------------------------

    def check_converged(self) -> None:
        """Every live node has applied the same entries as the leader (call after healing)."""
        leader = self.leader()
        if leader is None:
            raise InvariantViolation(f"no leader (seed {self.seed})\n{self.trace()}")
        target = self.core(leader).commit_index
        for node_id in self.alive():
            core = self.core(node_id)
            if core.applied_index != target:
                raise InvariantViolation(
                    f"{node_id} applied {core.applied_index}, leader {leader} committed "
                    f"{target} (seed {self.seed})\n{self.trace()}"
                )


# --------------------------------------------------------------------------------------------
# The randomized mixed-fault run


@dataclass(frozen=True)
class RunReport:
    seed: int
    steps: int
    committed: int
    elections: int
    delivered: int
    dropped: int


def run_random(
    seed: int,
    *,
    steps: int = 300,
    nodes: int | None = None,
    settle_ticks: int = 600,
    observe: Callable[[SimulatedCluster, str], None] | None = None,
) -> RunReport:
    """One randomized schedule of proposals, reads, transfers, snapshots, partitions, lossy
    links, crashes and restarts; then heal everything and check that the cluster converges."""
    rng = random.Random(seed)
    size = nodes or rng.choice((3, 3, 5))
    cluster = SimulatedCluster(
        size,
        seed=seed,
        election_ticks=rng.choice((5, 10)),
        ready_lag=rng.choice((0.0, 0.0, 0.2)),
        max_entries_bytes=rng.choice((64, 1 << 20)),
        max_inflight=rng.choice((1, 4, 256)),
        snapshot_chunk_bytes=rng.choice((16, 1 << 16)),
    )
    cluster.set_faults(
        drop=rng.choice((0.0, 0.02, 0.1)),
        duplicate=rng.choice((0.0, 0.02)),
        delay=rng.choice(((0, 0), (0, 1), (0, 3))),
    )
    ids = sorted(cluster.nodes)
    proposals = 0
    reads = 0

    def act(name: str) -> None:
        if observe is not None:
            observe(cluster, name)

    for _ in range(steps):
        roll = rng.random()
        alive = cluster.alive()
        leader = cluster.leader()
        if roll < 0.30 and leader is not None:
            try:
                cluster.propose(f"{seed}:{proposals}".encode(), leader)
                proposals += 1
                act("propose")
            except CatgaError:
                pass
        elif roll < 0.34 and alive:
            try:
                reads += 1
                cluster.read_index(rng.choice(alive), f"read-{reads}")
                act("read")
            except CatgaError:
                pass
        elif roll < 0.36 and leader is not None:
            try:
                cluster.transfer_leadership(rng.choice(ids), leader)
                act("transfer")
            except CatgaError:
                pass
        elif roll < 0.38 and alive:
            node_id = rng.choice(alive)
            core = cluster.core(node_id)
            cluster.flush()
            if core.applied_index > core.log.offset:
                cluster.compact(node_id)
                act("compact")
        elif roll < 0.40:
            cluster.isolate(rng.choice(ids))
            act("isolate")
        elif roll < 0.42:
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randint(1, len(ids) - 1)
            cluster.split(shuffled[:cut], shuffled[cut:])
            act("split")
        elif roll < 0.43:
            a, b = rng.sample(ids, 2)
            cluster.one_way(a, b)
            act("one_way")
        elif roll < 0.44 and len(ids) >= 3:
            shuffled = rng.sample(ids, len(ids))
            via = shuffled[0]
            half = (len(ids) - 1) // 2
            cluster.bridge(shuffled[1 : 1 + half], shuffled[1 + half :], via)
            act("bridge")
        elif roll < 0.50:
            cluster.heal()
            act("heal")
        elif roll < 0.52 and alive:
            cluster.crash(rng.choice(alive))
            act("crash")
        elif roll < 0.60:
            crashed = [n for n in ids if n not in alive]
            if crashed:
                cluster.restart(rng.choice(crashed))
                act("restart")
        cluster.step()

    # Heal everything and demand progress: a leader, and every node applying the same log.
    cluster.heal()
    cluster.set_faults()
    cluster.ready_lag = 0.0
    for node_id in ids:
        if not cluster.nodes[node_id].alive:
            cluster.restart(node_id)
    cluster.commit(f"{seed}:final".encode(), max_ticks=settle_ticks)
    cluster.run_until(lambda: _converged(cluster), max_ticks=settle_ticks)
    cluster.check_converged()
    return RunReport(
        seed,
        steps,
        committed=max(cluster._committed, default=0),
        elections=len(cluster._leader_of_term),
        delivered=cluster.delivered,
        dropped=cluster.dropped,
    )


def _converged(cluster: SimulatedCluster) -> bool:
    leader = cluster.leader()
    if leader is None:
        return False
    target = cluster.core(leader).commit_index
    return all(cluster.core(n).applied_index == target for n in cluster.alive())


# --------------------------------------------------------------------------------------------
# python -m catga_sync.testing


def _demo() -> None:
    cluster = SimulatedCluster(3, seed=7)
    print("A simulated 3-node Raft cluster (election timeout 10-19 ticks, heartbeat 1 tick).")
    ticks = cluster.run_until(lambda: cluster.leader() is not None)
    leader = cluster.wait_for_leader()
    print(
        f"t={cluster.now:>4}: {leader} elected leader of term {cluster.core(leader).term} "
        f"after {ticks} ticks"
    )
    for word in (b"create order 1", b"create order 2", b"pay order 1"):
        entry = cluster.commit(word)
        print(
            f"t={cluster.now:>4}: {word.decode()!r} committed at index {entry.index} "
            "and applied on every node"
        )
    print(f"t={cluster.now:>4}: crash the leader {leader}")
    cluster.crash(leader)
    new_leader = cluster.wait_for_leader()
    print(
        f"t={cluster.now:>4}: {new_leader} elected leader of term {cluster.core(new_leader).term}"
    )
    entry = cluster.commit(b"ship order 1")
    print(
        f"t={cluster.now:>4}: 'ship order 1' committed at index {entry.index} by the "
        "surviving majority"
    )
    cluster.restart(leader)
    cluster.run_until(lambda: _converged(cluster))
    print(f"t={cluster.now:>4}: {leader} restarted from its persisted log and caught up")
    for node_id in sorted(cluster.nodes):
        items = [i.decode() for i in cluster.applied(node_id)]
        print(f"        {node_id} applied {items}")
    print(
        "Every safety invariant was checked after every event. "
        "Try: python -m catga_sync.testing fuzz --seeds 200"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catga_sync.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="elect, replicate, crash the leader, recover")
    fuzz = sub.add_parser("fuzz", help="run randomized mixed-fault schedules")
    fuzz.add_argument("--seeds", type=int, default=1000)
    fuzz.add_argument("--first", type=int, default=0)
    fuzz.add_argument("--steps", type=int, default=300)
    replay = sub.add_parser("replay", help="re-run one seed and print its schedule")
    replay.add_argument("seed", type=int)
    replay.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.command == "demo":
        _demo()
        return 0
    if args.command == "fuzz":
        for seed in range(args.first, args.first + args.seeds):
            run_random(seed, steps=args.steps)
        print(f"{args.seeds} seeds x {args.steps} steps: no invariant violated")
        return 0
    try:
        report = run_random(args.seed, steps=args.steps)
    except (InvariantViolation, TimeoutError) as exc:
        print(exc)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
