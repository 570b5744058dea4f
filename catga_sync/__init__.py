"""catga_sync: Raft-based coordination for Flask apps and Python worker processes."""

from __future__ import annotations

import logging

from .errors import (
    CatgaError,
    CommitTimeoutError,
    ConfigError,
    ForwardingError,
    InvalidLockRequestError,
    InvalidMessageError,
    LeadershipTransferError,
    LockNotAcquiredError,
    LockNotHeldError,
    MembershipChangeError,
    NoLeaderError,
    NotLeaderError,
    PeerAuthError,
    ProposalDroppedError,
    StaleTokenError,
    StorageError,
)

__version__ = "0.1.0"

# Libraries log; applications decide where it goes (a NullHandler, as the logging HOWTO asks).
logging.getLogger("catga_sync").addHandler(logging.NullHandler())

__all__ = [
    "CatgaError",
    "CommitTimeoutError",
    "ConfigError",
    "ForwardingError",
    "InvalidLockRequestError",
    "InvalidMessageError",
    "LeadershipTransferError",
    "LockNotAcquiredError",
    "LockNotHeldError",
    "MembershipChangeError",
    "NoLeaderError",
    "NotLeaderError",
    "PeerAuthError",
    "ProposalDroppedError",
    "StaleTokenError",
    "StorageError",
    "__version__",
]
