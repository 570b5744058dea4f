"""How Raft messages travel between nodes: JSON batches over HTTP, signed with the cluster secret.

:mod:`.http` sends (one sender thread and queue per peer), the peer RPC blueprint in
:mod:`catga_sync.web.blueprint` receives, :mod:`.memory` connects nodes inside one process for
tests. :mod:`.wire` and :mod:`.signing` define the format both ends agree on. What a follower
sends the leader on a caller's behalf travels here too: log entries to propose
(:mod:`.proposals`) and mediator commands to run (:mod:`.forward_wire`, :mod:`.forward_client`).
Importing this package does not import ``requests`` or Flask.
"""

from __future__ import annotations

from .base import PeerReceiver, Transport
from .memory import MemoryNetwork, MemoryTransport
from .wire import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SIGNATURE_WINDOW,
    DEFAULT_URL_PREFIX,
    PROTOCOL_VERSION,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_SIGNATURE_WINDOW",
    "DEFAULT_URL_PREFIX",
    "PROTOCOL_VERSION",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerReceiver",
    "Transport",
]
