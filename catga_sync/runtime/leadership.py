"""Leadership changes derived once from the node's status stream, for every feature that starts
or stops work with leadership (singleton tasks, gated jobs, the lease monitor, the coordinator's
events)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .extension import NodeHandle
    from .status import NodeStatus

__all__ = ["LeadershipChange", "LeadershipWatch"]


@dataclass(frozen=True, slots=True)
class LeadershipChange:
    """The term this node leads in went from ``previous`` to ``leading`` (None: not leading),
    or the node stopped (``stopped``: it will lead no more)."""

    previous: int | None
    leading: int | None
    stopped: bool
    status: NodeStatus

    @property
    def elected(self) -> bool:
        """This node leads in a term it did not lead in before."""
        return self.leading is not None

    @property
    def lost(self) -> bool:
        """This node no longer leads in the term it led in (it may lead in a newer one)."""
        return self.previous is not None


class LeadershipWatch:
    """Calls ``on_change(change)`` on the Raft loop when the term this node leads in changes
    (elected, stepped down, or re-elected in a newer term without a status in between) or the
    node stops. Most status changes are commits, and cost one comparison here.

    ``on_change`` runs on the Raft loop: it must only update state and wake its own thread.
    ``mirrored``: also follow the hosting worker's status while the node is a local client
    (:mod:`~catga_sync.runtime.remote`); never for work that must run on the leader only.
    """

    def __init__(
        self,
        node: NodeHandle,
        on_change: Callable[[LeadershipChange], None],
        *,
        mirrored: bool = False,
    ) -> None:
        self._on_change = on_change
        self.leading: int | None = node.status.leading_term
        """The term this node leads in, as of the last change (None: not leading)."""
        self.stopped = False
        if mirrored:
            node.add_status_listener(self._on_status, mirrored=True)
        else:  # the protocol's plain form: any NodeHandle has it
            node.add_status_listener(self._on_status)

    def _on_status(self, old: NodeStatus, new: NodeStatus) -> None:
        leading = new.leading_term
        stopped = old.running and not new.running
        if leading == self.leading and not stopped:
            return
        previous, self.leading = self.leading, leading
        self.stopped = self.stopped or stopped
        self._on_change(LeadershipChange(previous, leading, stopped, new))
