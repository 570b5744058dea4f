"""Membership changes at runtime: add a node as a learner and promote it once caught up,
remove one (the leader hands leadership over first), move leadership, list the members.

A part of :class:`~catga_sync.runtime.node.RaftNode` (a mixin, like
:mod:`~catga_sync.runtime.calls`). The core makes single-server changes (thesis §4.1) and
refuses a second one while one is pending; this layer runs the steps of a change on the leader,
one change at a time, and forwards the call to the leader from any other node over the admin
routes (:mod:`catga_sync.transport.admin`; the routes themselves are served by
:mod:`catga_sync.web.admin`, which the engine does not import).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..config import normalize_or_reason
from ..errors import CommitTimeoutError, MembershipChangeError, NoLeaderError, NotLeaderError
from ..raft import ConfigChange, ConfigChangeType, Membership, RaftCore, Role
from ..transport.admin import AdminClient
from .status import NodeStatus

__all__ = ["CATCH_UP_ENTRIES", "Members", "NodeMembership"]

log = logging.getLogger("catga_sync.node")

T = TypeVar("T")
R = TypeVar("R")

CATCH_UP_ENTRIES = 8
"""A learner is promoted once its match index, as the leader tracks it, is within this many
entries of the leader's last index: close enough that the new voter does not slow commits."""


@dataclass(frozen=True, slots=True)
class Members:
    """A membership: the voters, the learners, and the leader that reported it."""

    voters: tuple[str, ...]
    learners: tuple[str, ...]
    leader: str | None

    def to_json(self) -> dict[str, Any]:
        return {"voters": list(self.voters), "learners": list(self.learners), "leader": self.leader}

    @classmethod
    def from_json(cls, data: Any) -> Members:
        if not isinstance(data, dict):
            raise MembershipChangeError(f"the leader answered an unreadable membership: {data!r}")
        return cls(
            tuple(data.get("voters") or ()), tuple(data.get("learners") or ()), data.get("leader")
        )


class NodeMembership:
    """The membership calls of a running node (see the module docstring)."""

    node_id: str
    raft_id: str
    _board: Any
    _stopping_event: threading.Event
    _admin_client: AdminClient | None
    _change_lock: threading.Lock
    _change_running: str | None

    # Provided by RaftNode / NodeCalls.
    config: Any
    timeouts: Any

    def _call(self, fn: Callable[[RaftCore], T], timeout: float) -> T:
        raise NotImplementedError

    def _default_timeout(self, timeout: float | None) -> float:
        raise NotImplementedError

    def wait_for(self, predicate: Callable[[NodeStatus], bool], timeout: float) -> NodeStatus:
        raise NotImplementedError

    # ========================================================================================
    # Reading

    @property
    def members(self) -> Members:
        """The voters and learners as this node knows them (the latest configuration in its
        log, committed or not: the one in force, thesis §4.1)."""
        status = self._board.status
        return Members(status.members, status.learners, status.leader_endpoint)

    def replication(self, *, timeout: float | None = None) -> dict[str, int]:
        """On the leader: each member's match index (the log it is known to hold), and
        ``"last_index"``, the leader's own last index. Empty on any other node."""

        def read(core: RaftCore) -> dict[str, int]:
            if core.role is not Role.LEADER:
                return {}
            members = core.membership.nodes
            # Not the nodes it still says farewell to (raft/core.py): they are no members.
            found = {node: p.match for node, p in core.progress.items() if node in members}
            found[core.id] = core.log.last_index
            return {**found, "last_index": core.log.last_index}

        return self._call(read, self._default_timeout(timeout))

    def members_document(
        self, *, forward: bool = True, timeout: float | None = None
    ) -> dict[str, Any]:
        """What ``GET /_catga/admin/members`` answers: the membership, this node's own view
        (``node``), and on the leader each member's match index (``replication``). With
        ``forward``, a follower asks the leader."""
        timeout = self._default_timeout(timeout)
        status = self._board.status
        if forward and not status.is_leader:
            deadline = time.monotonic() + timeout
            answer = self._forward_json("GET", "members", None, deadline, True)
            if answer is not None:
                return answer
            status = self._board.status  # it has become the leader meanwhile
        document: dict[str, Any] = {
            **self.members.to_json(),
            "node": {
                "node_id": status.node_id,
                "endpoint": status.raft_id,
                "role": status.role.value,
                "membership": status.membership,
                "term": status.term,
                "leader": status.leader_endpoint,
                "commit_index": status.commit_index,
                "applied_index": status.last_applied,
                "running": status.running,
            },
        }
        if status.is_leader:
            document["replication"] = self.replication(timeout=timeout)
        return document

    # ========================================================================================
    # Changing

    def add_member(
        self,
        endpoint: str,
        *,
        voter: bool = True,
        timeout: float | None = None,
        forward: bool = True,
    ) -> Members:
        """Add ``endpoint`` (a node started in join mode) to the cluster and return the new
        membership. It joins as a learner (it receives the log and does not vote); with
        ``voter`` it is promoted once its match index, checked on the leader, is within
        :data:`CATCH_UP_ENTRIES` of the leader's last index. From a follower the call is
        forwarded to the leader (``forward=False``: raise NotLeaderError instead).

        Raises MembershipChangeError when another change is under way, or the learner did not
        catch up in ``timeout`` (it then stays a learner)."""
        target = _endpoint(endpoint)

        def here(deadline: float) -> Members:
            with self._one_change(f"adding {target}"):
                members = self.members
                if target in members.voters or (not voter and target in members.learners):
                    return members  # already there: a retried call must not fail
                if target not in members.learners:
                    self._change(ConfigChangeType.ADD_LEARNER, target, deadline)
                    log.info("node %s: added %s as a learner", self.node_id, target)
                if voter:
                    self._promote_when_caught_up(target, deadline)
                    log.info("node %s: promoted %s to voter", self.node_id, target)
                return self.members

        body = {"endpoint": target, "voter": voter}
        return self._on_leader(here, Members.from_json, "POST", "members", body, timeout, forward)

    def remove_member(
        self, endpoint: str, *, timeout: float | None = None, forward: bool = True
    ) -> Members:
        """Remove ``endpoint`` (a voter or a learner) and return the new membership. Removing
        the leader moves leadership to the most up-to-date follower first, and the new leader
        removes it. From a follower the call is forwarded to the leader."""
        target = _endpoint(endpoint)

        def here(deadline: float) -> Members | None:
            if target == self.raft_id:
                remaining = max(0.0, deadline - time.monotonic())
                successor = self.move_leadership(None, timeout=remaining)
                log.info(
                    "node %s: handed leadership to %s before its removal", self.node_id, successor
                )
                return None  # the new leader removes this node
            with self._one_change(f"removing {target}"):
                members = self.members
                if target not in members.voters and target not in members.learners:
                    raise MembershipChangeError(
                        f"{target} is not a member (voters: {', '.join(members.voters)}; "
                        f"learners: {', '.join(members.learners) or 'none'}); check the endpoint"
                    )
                self._change(ConfigChangeType.REMOVE, target, deadline)
                log.info("node %s: removed %s from the cluster", self.node_id, target)
                return self.members

        body = {"endpoint": target}
        return self._on_leader(here, Members.from_json, "DELETE", "members", body, timeout, forward)

    def move_leadership(
        self, to: str | None = None, *, timeout: float | None = None, forward: bool = True
    ) -> str:
        """Hand leadership to ``to`` (default: the most up-to-date follower), wait until a
        leader other than this one is known, and return its endpoint. From a follower the call
        is forwarded to the leader. Raises LeadershipTransferError for a target that is not a
        voter, CommitTimeoutError when leadership did not move in time."""
        target = None if to is None else _endpoint(to)
        status = self._board.status
        if target is not None and status.leader_endpoint == target:
            return target  # already there

        def here(deadline: float) -> str:
            def transfer(core: RaftCore) -> str | None:
                chosen = target or core.most_up_to_date_voter()
                if chosen is not None:
                    core.transfer_leadership(chosen)
                return chosen

            remaining = max(0.0, deadline - time.monotonic())
            chosen = self._call(transfer, remaining)
            if chosen is None:
                raise MembershipChangeError(
                    "there is no other voter to hand leadership to: add one first"
                )
            try:
                self.wait_for(
                    lambda s: s.leader_endpoint is not None and s.leader_endpoint != self.raft_id,
                    remaining,
                )
            except TimeoutError:
                raise CommitTimeoutError(
                    f"leadership did not move from {self.raft_id} to {chosen} in time (a "
                    "transfer aborts after an election timeout); retry"
                ) from None
            return str(self._board.status.leader_endpoint)

        def answered(answer: dict[str, Any]) -> str:
            return str(answer["leader"])

        return self._on_leader(here, answered, "POST", "transfer", {"to": target}, timeout, forward)

    # ========================================================================================
    # The steps

    def _one_change(self, what: str) -> _OneChange:
        return _OneChange(self, what)

    def _change(self, kind: ConfigChangeType, target: str, deadline: float) -> None:
        """Propose one change and wait until this leader has applied it."""

        def propose(core: RaftCore) -> tuple[int, int]:
            entry = core.propose_config_change(ConfigChange(kind, target))
            return entry.index, entry.term

        remaining = max(0.0, deadline - time.monotonic())
        # A new leader takes no change before its no-op commits (the core refuses it): a
        # leader elected a moment ago, as after removing the last one, waits for that first.
        with contextlib.suppress(TimeoutError):
            self.wait_for(lambda s: s.commit_term == s.term or not s.is_leader, remaining)
        index, term = self._call(propose, remaining)
        try:
            status = self.wait_for(lambda s: s.last_applied >= index, remaining)
        except TimeoutError:
            raise CommitTimeoutError(
                f"the membership change ({kind.value} {target}) was not committed within the "
                "timeout: is a quorum of voters up? Look at `catga status`"
            ) from None
        if status.term != term and not self._call(lambda c: c.log.term(index) == term, remaining):
            raise MembershipChangeError(
                f"the change ({kind.value} {target}) was lost to a leader change; retry"
            )

    def _promote_when_caught_up(self, target: str, deadline: float) -> None:
        """Propose ADD_VOTER once the leader sees the learner close to its last index; checked
        on the loop, in the same step as the proposal, so the check cannot go stale."""

        def try_promote(core: RaftCore) -> tuple[int, int, int]:
            progress = core.progress.get(target)
            match = progress.match if progress is not None else 0
            last = core.log.last_index
            if match < max(last - CATCH_UP_ENTRIES, core.log.committed):
                return (match, last, 0)
            entry = core.propose_config_change(ConfigChange(ConfigChangeType.ADD_VOTER, target))
            return (match, last, entry.index)

        match = last = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MembershipChangeError(
                    f"learner {target} has not caught up in time (it holds index {match} of "
                    f"{last}); it stays a learner. Check that it runs and is reachable, then "
                    f"add it again (catga members add {target})"
                )
            match, last, index = self._call(try_promote, remaining)
            if index:
                break
            # The leader's view of the learner changes with each of its answers (one round
            # trip, at most a heartbeat apart): look again then.
            self._stopping_event.wait(min(remaining, self.timeouts.heartbeat))
        try:
            self.wait_for(lambda s: s.last_applied >= index, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise CommitTimeoutError(
                f"promoting {target} was not committed in time: is a quorum of voters up?"
            ) from None

    # ========================================================================================
    # Forwarding

    def _on_leader(
        self,
        here: Callable[[float], R | None],
        answered: Callable[[dict[str, Any]], R],
        method: str,
        route: str,
        body: dict[str, Any] | None,
        timeout: float | None,
        forward: bool,
    ) -> R:
        """Run ``here(deadline)`` while this node leads, else send the call to the leader and
        read its answer with ``answered``; follow leadership as it moves (``here`` returning
        None: it moved away from this node) until the timeout."""
        deadline = time.monotonic() + self._default_timeout(timeout)
        while True:
            if self._board.status.is_leader:
                result = here(deadline)
                if result is not None:
                    return result
                continue
            answer = self._forward_json(method, route, body, deadline, forward)
            if answer is not None:
                return answered(answer)

    def _forward_json(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None,
        deadline: float,
        forward: bool,
    ) -> dict[str, Any] | None:
        """Send an admin call to the leader, waiting for one to be known and following it
        while it moves, until ``deadline``. None: this node has become the leader."""
        hint: str | None = None  # the leader named by the last node asked
        while True:
            status = self._board.status
            # A removed node hears from no leader again: its own view may be stale for ever,
            # so the leader the last node named comes first.
            leader = hint or status.leader_endpoint
            if status.is_leader:
                return None
            if not forward:
                raise NotLeaderError(status.leader_id, leader) if leader else NoLeaderError()
            if leader is None or leader == self.raft_id:
                if time.monotonic() >= deadline:
                    raise NoLeaderError()
                self._stopping_event.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            try:
                return self._admin().call(
                    leader, method, route, body, timeout=max(0.1, deadline - time.monotonic())
                )
            except NotLeaderError as exc:
                if time.monotonic() >= deadline:
                    raise
                hint = exc.leader_endpoint if exc.leader_endpoint != leader else None
                if hint is None:
                    self._stopping_event.wait(0.05)  # no new leader named yet: look again

    def _admin(self) -> AdminClient:
        if self._admin_client is None:
            self._admin_client = AdminClient(
                secret=self.config.secret,
                url_prefix=self.config.url_prefix,
                sender=self.raft_id,
                sender_name=self.node_id,
                tls=self.config.tls_client,
            )
        return self._admin_client

    def _warn_if_members_differ(self, membership: Membership) -> None:
        """On start: the replicated membership wins over the ``members`` setting, which only
        bootstraps a new cluster; say so when they differ, naming both lists."""
        if self.config.join:
            return
        configured = Membership(frozenset(self.config.voters))
        if membership != configured:
            log.warning(
                "node %s: the members setting (%s) differs from the membership replicated in "
                "its log (voters: %s; learners: %s); the replicated one is in force. Members "
                "only bootstraps a new cluster: change membership with `catga members add` / "
                "`catga members remove`, and update the setting to match",
                self.node_id,
                ", ".join(sorted(configured.voters)),
                ", ".join(sorted(membership.voters)) or "none",
                ", ".join(sorted(membership.learners)) or "none",
            )


class _OneChange:
    """Holds this leader's change lock for one change; a second change gets a typed error."""

    def __init__(self, node: NodeMembership, what: str) -> None:
        self._node = node
        self._what = what

    def __enter__(self) -> None:
        node = self._node
        if not node._change_lock.acquire(blocking=False):
            raise MembershipChangeError(
                f"another membership change is in progress ({node._change_running}); wait "
                "for it to finish, then retry: one change at a time keeps every majority safe"
            )
        node._change_running = self._what

    def __exit__(self, *exc_info: object) -> None:
        self._node._change_running = None
        self._node._change_lock.release()


def _endpoint(value: object) -> str:
    try:
        return normalize_or_reason(value)
    except ValueError as exc:
        raise MembershipChangeError(
            f"{value!r} is not a node endpoint ({exc}): write it as http://host:port, the "
            "node's Cluster__LocalNodeEndpoint"
        ) from None
