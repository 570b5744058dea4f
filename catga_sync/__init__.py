"""catga_sync: Raft-based coordination for Flask apps and Python worker processes.

What users need is importable from here, by layer (``__all__`` below doubles as the map)::

    from catga_sync import CatgaCluster, ClusterConfig, ClusterNode, DistributedLock

Names load lazily (PEP 562): ``import catga_sync`` imports only the errors, and each name its
module on first use, so a worker that needs the errors does not pay for Flask or SQLAlchemy.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    AlreadyRegisteredError,
    BackupFileError,
    CatgaError,
    ClientAuthError,
    CommandError,
    CommitTimeoutError,
    ConfigError,
    ForkedProcessError,
    ForwardingError,
    IdempotencyKeyReusedError,
    InvalidCommandError,
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
    RegistrationError,
    RequestBodyError,
    RequestExpiredError,
    StaleTokenError,
    StorageError,
    StorageUnavailableError,
    UnknownCommandError,
    UnknownCommandTypeError,
    UsageError,
)

if TYPE_CHECKING:
    from .client import ClusterClient
    from .config import ClusterConfig, Timeouts
    from .coordinator import ClusterCoordinator
    from .fencing import fenced_update
    from .forwarding import ForwardToLeaderBehavior, LeaderOnlyBehavior
    from .fsm import StateMachine, command, query
    from .jobs import JobContext, LeaderJobs
    from .kv import ReplicatedDict
    from .locks import DistributedLock, Lease
    from .mediator import Mediator
    from .node import ClusterNode
    from .runtime import Extension, NodeHandle, NodeStatus, RaftNode
    from .singleton import SingletonTaskRunner, SingletonTasks, TaskContext
    from .testing import SimulatedCluster
    from .web.extension import CatgaCluster

from ._version import __version__

# Libraries log; applications decide where it goes (a NullHandler, as the logging HOWTO asks).
logging.getLogger("catga_sync").addHandler(logging.NullHandler())

_LAZY: dict[str, str] = {
    # configuration
    "ClusterConfig": "config",
    "Timeouts": "config",
    # the engine and the node
    "RaftNode": "runtime",
    "NodeStatus": "runtime",
    "NodeHandle": "runtime",
    "Extension": "runtime",
    "ClusterNode": "node",
    # replicated state
    "StateMachine": "fsm",
    "command": "fsm",
    "query": "fsm",
    "ReplicatedDict": "kv",
    # leadership, commands and the mediator
    "ClusterCoordinator": "coordinator",
    "Mediator": "mediator",
    "LeaderOnlyBehavior": "forwarding",
    "ForwardToLeaderBehavior": "forwarding",
    # leader-only work
    "SingletonTaskRunner": "singleton",
    "SingletonTasks": "singleton",
    "TaskContext": "singleton",
    "LeaderJobs": "jobs",
    "JobContext": "jobs",
    # locks and fencing
    "DistributedLock": "locks",
    "Lease": "locks",
    "fenced_update": "fencing",
    # Flask
    "CatgaCluster": "web.extension",
    # processes outside the cluster
    "ClusterClient": "client",
    # testing
    "SimulatedCluster": "testing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'catga_sync' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup does not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [  # noqa: RUF022 (grouped by layer: the map of the package)
    "__version__",
    # configuration
    "ClusterConfig",
    "Timeouts",
    # the engine and the node: catga_sync.runtime, catga_sync.node
    "ClusterNode",
    "Extension",
    "NodeHandle",
    "NodeStatus",
    "RaftNode",
    # replicated state: catga_sync.fsm, catga_sync.kv
    "ReplicatedDict",
    "StateMachine",
    "command",
    "query",
    # leadership and commands: catga_sync.coordinator, catga_sync.mediator, catga_sync.forwarding
    "ClusterCoordinator",
    "ForwardToLeaderBehavior",
    "LeaderOnlyBehavior",
    "Mediator",
    # leader-only work: catga_sync.singleton, catga_sync.jobs
    "JobContext",
    "LeaderJobs",
    "SingletonTaskRunner",
    "SingletonTasks",
    "TaskContext",
    # locks and fencing: catga_sync.locks, catga_sync.fencing
    "DistributedLock",
    "Lease",
    "fenced_update",
    # Flask: catga_sync.web
    "CatgaCluster",
    # processes outside the cluster: catga_sync.client
    "ClusterClient",
    # testing: catga_sync.testing
    "SimulatedCluster",
    # errors: catga_sync.errors
    "AlreadyRegisteredError",
    "BackupFileError",
    "CatgaError",
    "ClientAuthError",
    "CommandError",
    "CommitTimeoutError",
    "ConfigError",
    "ForkedProcessError",
    "ForwardingError",
    "IdempotencyKeyReusedError",
    "InvalidCommandError",
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
    "RegistrationError",
    "RequestBodyError",
    "RequestExpiredError",
    "StaleTokenError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownCommandError",
    "UnknownCommandTypeError",
    "UsageError",
]
