"""A node served by another process: local-client mode, for the sibling workers of one host.

Under a pre-fork server (gunicorn ``-w N``) every worker builds the same node, but only one of
them may run it: the one holding the host's worker lock (:mod:`catga_sync.web.workers`). The
others put their node in *local-client mode* with :meth:`LocalClientMode.serve_through`: its
commands and queries go to the hosting worker through a :class:`HostLink`, and its status is a
mirror of the host's, fed by the link. Nothing runs Raft, applies entries or leads here, so the
node's own status board stays at "not running": singleton tasks, gated jobs and the lease
monitor, which watch that board, never start in a client worker. Only listeners added with
``mirrored=True`` (the coordinator's leadership events) see the mirror.

When the hosting worker dies, a client worker that takes the lock calls :meth:`end_client_mode`
and starts the node for real: to the cluster, a node restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import NodeNotRunningError, UsageError
from ..raft import Role
from .status import NodeStats, NodeStatus, StatusBoard, StatusListener

if TYPE_CHECKING:
    from ..fsm import Outcome

__all__ = ["HostLink", "LocalClientMode"]


class HostLink(Protocol):
    """How a client worker reaches the worker that hosts its node."""

    def submit(self, data: bytes, *, timeout: float) -> Outcome:
        """Run a command entry through the host (``RaftNode.submit`` there)."""
        ...

    def query(
        self,
        machine: str,
        method: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        timeout: float,
    ) -> Any:
        """A linearizable query on the host's state machine ``machine``."""
        ...

    def close(self) -> None:
        """Stop following the host. Idempotent."""
        ...


class LocalClientMode:
    """The local-client half of :class:`~catga_sync.runtime.RaftNode` (a mixin)."""

    node_id: str
    _board: StatusBoard

    _host_link: HostLink | None = None
    _mirror: StatusBoard | None = None
    _mirrored_listeners: list[StatusListener]

    @property
    def host_link(self) -> HostLink | None:
        """The link to the hosting worker while this node is a local client, else None."""
        return self._host_link

    def serve_through(self, link: HostLink) -> None:
        """Make this (unstarted) node a local client of the worker that runs it."""
        if getattr(self, "_started", False):
            raise UsageError(f"node {self.node_id} runs here: it cannot be a local client")
        # The mirror's own counters: this node's stats count what its own loop does (nothing).
        mirror = StatusBoard(self._board.status, NodeStats())
        for listener in self._mirrored():
            mirror.add_listener(listener)
        self._mirror = mirror
        self._host_link = link

    def publish_mirrored(self, status: NodeStatus) -> None:
        """The host's latest status, as the link saw it (the link's thread calls this)."""
        mirror = self._mirror
        if mirror is not None:
            mirror.publish(dataclasses.replace(status, node_id=self.node_id))

    def host_lost(self) -> None:
        """The hosting worker is gone: this node leads nothing and knows no leader until a
        worker hosts it again (the mirror says not running)."""
        mirror = self._mirror
        if mirror is not None:
            status = mirror.status
            mirror.publish(
                dataclasses.replace(
                    status, running=False, role=Role.FOLLOWER, leader_raft_id=None, leader_id=None
                )
            )

    def end_client_mode(self) -> None:
        """Stop being a local client (before this worker starts the node itself)."""
        link, self._host_link = self._host_link, None
        if link is not None:
            self.host_lost()
            link.close()
        self._mirror = None

    def _active_board(self) -> StatusBoard:
        mirror = self._mirror
        return mirror if mirror is not None and self._host_link is not None else self._board

    def _add_mirrored_listener(self, listener: StatusListener) -> None:
        self._mirrored().append(listener)
        if self._mirror is not None:
            self._mirror.add_listener(listener)

    def _mirrored(self) -> list[StatusListener]:
        try:
            return self._mirrored_listeners
        except AttributeError:
            self._mirrored_listeners = []
            return self._mirrored_listeners

    def _require_link(self) -> HostLink:
        link = self._host_link
        if link is None:
            raise NodeNotRunningError(f"node {self.node_id} is not running")
        return link
