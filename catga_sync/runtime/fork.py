"""The fork guard: a node's threads and connections do not survive ``os.fork()``, so a node
created before a fork refuses to run in the child (gunicorn's ``--preload``) with a message
that says what to do, instead of hanging on a lock its parent held."""

from __future__ import annotations

import os
import weakref

from ..errors import ForkedProcessError

__all__ = ["ForkGuard"]


class ForkGuard:
    """Remembers the process a node was created in; :meth:`check` raises in a forked child."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.pid = os.getpid()
        self.forked_from: int | None = None
        """The parent's pid, in a child forked after this guard was made."""
        _GUARDS.add(self)

    @property
    def forked(self) -> bool:
        return self.forked_from is not None or os.getpid() != self.pid

    def check(self) -> None:
        if self.forked:
            raise ForkedProcessError(
                f"node {self.node_id} was created in process {self.pid} and cannot run in "
                f"forked child {os.getpid()}: its threads and connections did not survive the "
                "fork. Create and start the node after forking (gunicorn: no --preload)."
            )

    def _after_fork_in_child(self) -> None:
        self.forked_from = self.pid


_GUARDS: weakref.WeakSet[ForkGuard] = weakref.WeakSet()


def _mark_forked_children() -> None:
    for guard in list(_GUARDS):
        guard._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_children)
