"""What a node says of the cluster to a client: :class:`ClientStatus`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import LeaderUnreachableError

__all__ = ["ClientStatus"]


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """What one node said of the cluster (``GET {url_prefix}/client/status``)."""

    node_id: str
    """The answering node's id."""
    endpoint: str
    """The answering node's endpoint (its Raft id)."""
    role: str
    """Its role: ``leader``, ``follower``, ``pre_candidate`` or ``candidate``."""
    term: int
    """The newest Raft term it knows."""
    is_leader: bool
    """Whether the answering node leads."""
    leader: str | None
    """The leader's endpoint, as the answering node knows it (None: no leader known)."""
    leader_id: str | None
    """The leader's node id (None: no leader known)."""
    commit_index: int
    """The answering node's commit index."""
    last_applied: int
    """The last log index it applied."""
    members: tuple[str, ...]
    """The voters' endpoints."""
    running: bool
    """Whether it runs (always True in an answer: a stopped node answers 503)."""
    version: int
    """A count that grows each time the answering node's leader, term or role changes (each
    node counts for itself)."""

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ClientStatus:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        values["members"] = tuple(values.get("members") or ())
        try:
            return cls(**values)
        except TypeError as exc:
            raise LeaderUnreachableError(
                f"a node answered a status this client cannot read ({exc}): is it a catga_sync "
                "node of a matching version?"
            ) from None
