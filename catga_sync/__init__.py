"""catga_sync: Raft-based coordination for Flask apps and Python worker processes."""

from __future__ import annotations

import logging

from .errors import (
    AlreadyRegisteredError,
    CatgaError,
    CommitTimeoutError,
    ConfigError,
    ForkedProcessError,
    ForwardingError,
    IdempotencyKeyReusedError,
    InvalidLockRequestError,
    InvalidMessageError,
    InvalidRequestIdError,
    LeadershipTransferError,
    LeaderUnreachableError,
    LockNotAcquiredError,
    LockNotHeldError,
    MembershipChangeError,
    NodeNotRunningError,
    NoLeaderError,
    NotLeaderError,
    NotRegisteredError,
    PeerAuthError,
    ProposalDroppedError,
    StaleTokenError,
    StorageError,
    UsageError,
)

__version__ = "0.1.0"

# Libraries log; applications decide where it goes (a NullHandler, as the logging HOWTO asks).
logging.getLogger("catga_sync").addHandler(logging.NullHandler())

__all__ = [
    "AlreadyRegisteredError",
    "CatgaError",
    "CommitTimeoutError",
    "ConfigError",
    "ForkedProcessError",
    "ForwardingError",
    "IdempotencyKeyReusedError",
    "InvalidLockRequestError",
    "InvalidMessageError",
    "InvalidRequestIdError",
    "LeaderUnreachableError",
    "LeadershipTransferError",
    "LockNotAcquiredError",
    "LockNotHeldError",
    "MembershipChangeError",
    "NoLeaderError",
    "NodeNotRunningError",
    "NotLeaderError",
    "NotRegisteredError",
    "PeerAuthError",
    "ProposalDroppedError",
    "StaleTokenError",
    "StorageError",
    "UsageError",
    "__version__",
]
