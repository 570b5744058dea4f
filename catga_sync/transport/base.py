"""The transport port: how a node's outgoing Raft messages reach its peers.

Incoming messages arrive through the peer RPC blueprint (or the in-memory hub in tests) and are
handed to a :class:`PeerReceiver`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..raft import Message


class Transport(Protocol):
    """Sends messages to peers. ``send`` never blocks on the network and never raises for a
    slow or dead peer: a message that cannot be delivered is dropped (Raft retries)."""

    def send(self, messages: Sequence[Message]) -> None: ...

    def close(self) -> None:
        """Stop sender threads and close connections. Idempotent."""
        ...


class PeerReceiver(Protocol):
    """What the peer RPC endpoint delivers to: a running node."""

    @property
    def raft_id(self) -> str:
        """This node's Raft identity (its normalized endpoint)."""
        ...

    def receive(self, messages: Sequence[Message], sender_name: str | None) -> None:
        """Queue validated messages for the Raft loop; returns at once."""
        ...


@runtime_checkable
class InlineReplyReceiver(Protocol):
    """A receiver that can answer a peer's request in its response (the HTTP transport asks
    for it with ``X-Catga-Reply: inline``)."""

    def receive_and_reply(
        self,
        messages: Sequence[Message],
        sender_name: str | None,
        timeout: float,
        *,
        queued: Callable[[], None] | None = None,
    ) -> list[Message]:
        """Queue ``messages``, call ``queued``, wait until they are handled and persisted (at
        most ``timeout`` seconds) and return the messages for their sender produced meanwhile."""
        ...


@runtime_checkable
class ProposalReceiver(Protocol):
    """A node that takes proposals forwarded by followers (when it leads)."""

    def propose_forwarded(
        self, data: bytes, *, timeout: float | None = None
    ) -> tuple[int, int, Any]:
        """Append ``data``, wait until applied; return its index, its term and its outcome
        (the follower that forwarded it commits up to that entry once it holds it)."""
        ...
