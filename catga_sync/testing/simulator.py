"""The simulated cluster: N Raft cores, their disks and a network, in one thread, all seeded.

:class:`SimulatedCluster` drives every :class:`~catga_sync.raft.RaftCore` the way a real node
does (persist, then send, then apply, then advance) over a network with per-link delay, loss,
duplication and reordering, partitions (isolate, split, one-way, bridge), and crashes that lose
whatever a node had not persisted. Time moves only when the test says so, and everything random
flows from one seed, so a failing schedule replays exactly. At each step of the driver loop the
cluster's :class:`~catga_sync.testing.invariants.Invariants` check Raft's safety properties.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NoReturn

from ..errors import CatgaError, NoLeaderError
from ..raft import (
    ConfigChange,
    ConfigChangeType,
    Entry,
    EntryType,
    Membership,
    Message,
    RaftConfig,
    RaftCore,
    ReadState,
    Ready,
    Role,
    Snapshot,
)
from .invariants import Invariants, InvariantViolation
from .nodes import ListStateMachine, SimStateMachine, _Disk, _Node

__all__ = ["LinkFaults", "SimulatedCluster"]


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How one directed link misbehaves. Delays are in ticks; a random delay reorders."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay: tuple[int, int] = (0, 0)


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
        self.invariants = Invariants(self._violation)
        """The safety checks, and the cluster-wide facts they keep (leaders, commits)."""
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
        self.invariants.acknowledged_is_persisted(sender.id, sender.disk, message)
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
            raise NoLeaderError(message=f"no leader to propose to at t={self.now}")
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
            applied = self.invariants.applied.get(entry.index)
            if node.core.applied_index < entry.index or applied is None:
                return False
            if applied[0] != entry.term:
                return False
        return True

    def lost(self, entry: Entry) -> bool:
        """True once another entry was applied at ``entry.index``: the proposal is gone."""
        applied = self.invariants.applied.get(entry.index)
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
            raise NoLeaderError(message="no leader")
        self.core(source).transfer_leadership(target)
        self._note(source, f"transfer leadership to {target}")
        self._maybe_handle_ready(self.nodes[source])

    def change_membership(self, change_type: ConfigChangeType, node_id: str) -> Entry:
        leader = self.leader()
        if leader is None:
            raise NoLeaderError(message="no leader")
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
            node.disk.persist(node.id, ready, self.invariants)
            for message in ready.messages:
                self._send(node, message)
            self._apply(node, ready)
            node.read_states.extend(ready.read_states)
            if ready.events:
                node.events.extend(ready.events)
            core.advance(ready)

    def _apply(self, node: _Node, ready: Ready) -> None:
        if ready.apply_snapshot and ready.snapshot is not None:
            node.machine.restore(ready.snapshot.data)
            self._note(node.id, f"restore snapshot {ready.snapshot.meta.index}")
        for entry in ready.committed_entries:
            self.invariants.applied_entry(node.id, entry)
            if entry.type is EntryType.NORMAL and entry.data:
                node.machine.apply(entry.index, entry.data)

    def _on_soft_state(self, node: _Node, core: RaftCore, ready: Ready) -> None:
        soft = ready.soft_state
        assert soft is not None
        self._note(node.id, f"{soft.role.value} term={soft.term} leader={soft.leader_id}")
        if soft.role is Role.LEADER:
            self.invariants.became_leader(node.id, soft.term, core)

    # -- reporting -----------------------------------------------------------------------------

    def _violation(self, who: str, what: str) -> NoReturn:
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
