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
    endpoint: str
    """The answering node's endpoint (its Raft id)."""
    role: str
    term: int
    is_leader: bool
    leader: str | None
    """The leader's endpoint, as the answering node knows it (None: no leader known)."""
    leader_id: str | None
    commit_index: int
    last_applied: int
    members: tuple[str, ...]
    running: bool
    version: int
    """Grows each time this node's leader, term or role changes (per node: another node's
    count is another count)."""

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
