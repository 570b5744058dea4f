"""An in-process network for tests of whole nodes without HTTP: a hub that hands batches over.

Delivery is synchronous (``receive`` only queues, so the sender is not held up) and, by default,
goes through the same JSON wire format and checks as the HTTP endpoint, so a message the real
transport would refuse is refused here too. Links can be cut to test partitions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from ..raft import Message
from .base import PeerReceiver
from .wire import WireFormatError, check_addressing, decode_batch, encode_batch

logger = logging.getLogger(__name__)


class MemoryNetwork:
    """Receivers by Raft id, and which links are cut. Thread-safe."""

    def __init__(self, *, codec_roundtrip: bool = True) -> None:
        self._codec_roundtrip = codec_roundtrip
        self._receivers: dict[str, PeerReceiver] = {}
        self._cut: set[frozenset[str]] = set()
        self._isolated: set[str] = set()
        self._lock = threading.Lock()
        self.delivered = 0
        """Messages handed to receivers."""
        self.dropped = 0
        """Messages lost to cut links, unknown receivers or refused batches."""

    def register(self, receiver: PeerReceiver) -> None:
        """Make ``receiver`` reachable at its ``raft_id``."""
        raft_id = receiver.raft_id
        with self._lock:
            current = self._receivers.get(raft_id)
            if current is not None and current is not receiver:
                raise ValueError(
                    f"a receiver is already registered as {raft_id!r}; unregister it first"
                )
            self._receivers[raft_id] = receiver

    def unregister(self, raft_id: str) -> None:
        """Make ``raft_id`` unreachable (a crashed or stopped node). Idempotent."""
        with self._lock:
            self._receivers.pop(raft_id, None)

    def partition(self, a: str, b: str) -> None:
        """Cut the link between ``a`` and ``b``, both ways."""
        with self._lock:
            self._cut.add(frozenset((a, b)))

    def isolate(self, raft_id: str) -> None:
        """Cut every link of ``raft_id``."""
        with self._lock:
            self._isolated.add(raft_id)

    def heal(self) -> None:
        """Restore every link."""
        with self._lock:
            self._cut.clear()
            self._isolated.clear()

    def deliver(self, sender_id: str, sender_name: str | None, messages: Sequence[Message]) -> int:
        """Hand ``messages`` (all to one receiver) over; returns how many were delivered."""
        if not messages:
            return 0
        to = messages[0].to
        with self._lock:
            receiver = self._receivers.get(to)
            cut = (
                frozenset((sender_id, to)) in self._cut
                or sender_id in self._isolated
                or to in self._isolated
            )
        if receiver is None or cut:
            self._count(dropped=len(messages))
            return 0
        batch: Sequence[Message] = messages
        try:
            if self._codec_roundtrip:
                batch = decode_batch(encode_batch(messages))
            check_addressing(batch, sender=sender_id, receiver=receiver.raft_id)
        except WireFormatError as exc:
            logger.warning("Refused a batch from %s to %s: %s", sender_id, to, exc)
            self._count(dropped=len(messages))
            return 0
        try:
            receiver.receive(batch, sender_name)
        except Exception:
            logger.exception("Receiver %s failed to take a batch from %s", to, sender_id)
            self._count(dropped=len(messages))
            return 0
        self._count(delivered=len(batch))
        return len(batch)

    def _count(self, *, delivered: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.delivered += delivered
            self.dropped += dropped


class MemoryTransport:
    """The :class:`~catga_sync.transport.base.Transport` of one node on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, sender_id: str, sender_name: str | None) -> None:
        self.network = network
        self.sender_id = sender_id
        self.sender_name = sender_name
        self._closed = False

    def send(self, messages: Sequence[Message]) -> None:
        """Deliver ``messages``, one batch per recipient; never raises."""
        if self._closed:
            return
        by_peer: dict[str, list[Message]] = {}
        for message in messages:
            by_peer.setdefault(message.to, []).append(message)
        for batch in by_peer.values():
            self.network.deliver(self.sender_id, self.sender_name, batch)

    def close(self) -> None:
        """Stop sending (later sends are no-ops). Idempotent."""
        self._closed = True
