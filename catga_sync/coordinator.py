"""The guide's ``IClusterCoordinator``: who leads, and what happens when that changes."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from blinker import Namespace

from .config_values import Duration, seconds
from .errors import NoLeaderError, NotRegisteredError
from .raft import Role
from .runtime.extension import Extension
from .runtime.leadership import LeadershipChange, LeadershipWatch

if TYPE_CHECKING:
    from .runtime.extension import NodeHandle
    from .runtime.status import NodeStatus

log = logging.getLogger("catga_sync.coordinator")

signals = Namespace()
leader_elected = signals.signal("catga-leader-elected")
"""Sent with ``sender=coordinator`` when this node becomes leader (``term=...``)."""
leader_lost = signals.signal("catga-leader-lost")
"""Sent with ``sender=coordinator`` when this node stops being leader (``term=...``)."""

LeadershipCallback = Callable[[bool], object]


class ClusterCoordinator(Extension):
    """Read who leads, and be told when this node gains or loses leadership.

    Callbacks run on the coordinator's own event thread, in order, never on the Raft loop: a
    slow or failing callback delays other callbacks but never the cluster, and an exception in
    one is logged and harms nothing. A node re-elected in a newer term without a status in
    between gets a loss and a gain, so a callback always sees the term it leads in change. The
    thread starts with the first event and ends once the node has stopped.

    An extension of the node (``node.extensions["coordinator"]``); ``ClusterNode`` installs
    it, and ``node.coordinator`` or ``ClusterCoordinator.of(node)`` returns it.
    """

    name = "coordinator"

    def __init__(self, node: NodeHandle | None = None) -> None:
        self._callbacks: list[LeadershipCallback] = []
        self._events: queue.SimpleQueue[tuple[bool, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._previous: threading.Thread | None = None
        self._events_lock = threading.Lock()
        if node is not None:
            node.add_extension(self)

    @classmethod
    def of(cls, node: NodeHandle) -> ClusterCoordinator:
        """The coordinator installed on ``node``."""
        found = node.extensions.get(cls.name)
        if not isinstance(found, ClusterCoordinator):
            raise NotRegisteredError(
                f"node {node.node_id} has no coordinator: install ClusterCoordinator() on it "
                "(ClusterNode does)"
            )
        return found

    def install(self, node: NodeHandle) -> None:
        self._node = node
        # mirrored: in a worker that is a local client of its host (gunicorn -w N), the
        # callbacks and signals follow the hosting worker's leadership.
        LeadershipWatch(node, self._on_leadership, mirrored=True)

    # -- the guide's properties ---------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def is_leader(self) -> bool:
        return self._node.status.is_leader

    @property
    def leader_id(self) -> str | None:
        """The leader's node id (its endpoint until its name is known), or None."""
        return self._node.status.leader_id

    @property
    def leader_endpoint(self) -> str | None:
        return self._node.status.leader_endpoint

    @property
    def term(self) -> int:
        return self._node.status.term

    @property
    def role(self) -> Role:
        return self._node.status.role

    @property
    def members(self) -> tuple[str, ...]:
        """Every voting member's endpoint, this node's included."""
        return self._node.status.members

    @property
    def status(self) -> NodeStatus:
        return self._node.status

    @property
    def node(self) -> NodeHandle:
        """The node this coordinator reports on (the forwarding behaviors use its config)."""
        return self._node

    # -- events ---------------------------------------------------------------------------------

    def on_leadership_change(self, callback: LeadershipCallback) -> LeadershipCallback:
        """Call ``callback(is_leader)`` whenever this node gains or loses leadership (the
        guide's ``LeadershipChanged``). Usable as a decorator; returns the callback."""
        self._callbacks.append(callback)
        return callback

    def remove_leadership_callback(self, callback: LeadershipCallback) -> None:
        self._callbacks.remove(callback)

    def wait_for_leader(self, timeout: Duration) -> str:
        timeout = seconds(timeout)
        """Block until some node leads; returns its endpoint. Raises NoLeaderError."""
        try:
            status = self._node.wait_for(lambda s: s.leader_endpoint is not None, timeout)
        except TimeoutError:
            raise NoLeaderError(
                message=f"no leader elected within {timeout}s: check that a majority of "
                f"{list(self.members)} is running and reachable"
            ) from None
        assert status.leader_endpoint is not None
        return status.leader_endpoint

    # -- plumbing -----------------------------------------------------------------------------

    def _on_leadership(self, change: LeadershipChange) -> None:
        # Two publishers around a takeover (a client worker's mirror, then its own node):
        # one at a time, so that the events keep their order.
        with self._events_lock:
            term = change.status.term
            if change.lost:
                self._events.put((False, term))
            if change.elected:
                self._events.put((True, term))
            if change.stopped:
                if self._thread is None:
                    return  # nothing was delivered in this life: nothing to end
                # The node leads no more: this thread ends after these. Events that follow (a
                # client worker that goes on to host the node) get a thread of their own,
                # which waits for this one.
                self._events.put(None)
                self._events = queue.SimpleQueue()
                self._previous, self._thread = self._thread, None
            elif self._thread is None and (change.lost or change.elected):
                # Started on the first event (on the Raft loop), not at install: a node that
                # never led costs no thread.
                self._thread = threading.Thread(
                    target=self._deliver,
                    args=(self._events, self._previous),
                    name=f"catga-events-{self._node.node_id}",
                    daemon=True,
                )
                self._thread.start()

    def _deliver(
        self,
        events: queue.SimpleQueue[tuple[bool, int] | None],
        previous: threading.Thread | None,
    ) -> None:
        if previous is not None:
            previous.join()  # the events of an earlier life first, in order
        while True:
            event = events.get()
            if event is None:
                return
            is_leader, term = event
            signal = leader_elected if is_leader else leader_lost
            try:
                signal.send(self, term=term)
            except Exception:
                log.exception("a %s receiver failed", signal.name)
            for callback in list(self._callbacks):
                try:
                    callback(is_leader)
                except Exception:
                    log.exception("leadership callback %r failed", callback)
