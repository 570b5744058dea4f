"""The composition root: :class:`ClusterNode` is the engine with the built-in extensions.

The engine (:class:`catga_sync.runtime.RaftNode`) runs Raft and knows no feature; this module
is the one place that assembles it with the features, each an extension in
``node.extensions``:

========================  ============================================================
``coordinator``           who leads, leadership callbacks and signals
``singleton_tasks``       work that runs on the leader only (:mod:`catga_sync.singleton`)
``singleton_jobs``        leader-gated APScheduler jobs (:mod:`catga_sync.jobs`)
``locks``                 the replicated lock table and its lease monitor
``forwarding``            commands forwarded to the leader, at most once per key
``embedded_server``       the peer RPC and ops routes served from a thread (no Flask app)
========================  ============================================================
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import ClusterConfig
from .coordinator import ClusterCoordinator
from .forwarding import ClusterForwarder, ForwardingGuard, default_forwarder
from .jobs import LeaderJobs
from .locks import LeaseMonitor
from .raft import Entry
from .runtime import NodeStats, NodeStatus, RaftNode
from .singleton import SingletonTasks
from .storage.base import Storage
from .transport.base import Transport
from .web.worker_app import EmbeddedServer

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from .mediator import Mediator

__all__ = ["ClusterNode", "NodeStats", "NodeStatus"]

log = logging.getLogger("catga_sync.node")


class ClusterNode(RaftNode):
    """One member of a catga_sync cluster, with every built-in feature.

    In a Flask app, :class:`~catga_sync.web.CatgaCluster` creates and starts it; in a worker
    process without Flask, ``ClusterNode(config).start()`` also serves the peer RPC from an
    embedded threaded HTTP server on the local endpoint's port (``serve_http=False``: not),
    bound to ``bind_host`` (default: the endpoint's host; ``0.0.0.0`` in a container, where
    the advertised name is not an address of the container's own).
    ``mediator`` runs the commands forwarded to ``POST {url_prefix}/forward``; ``forwarder``
    is the default :class:`~catga_sync.forwarding.ClusterForwarder` of every
    :class:`~catga_sync.forwarding.ForwardToLeaderBehavior` on this node (default: HTTP).
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        scheduler: BaseScheduler | None = None,
        storage: Storage | None = None,
        transport: Transport | None = None,
        serve_http: bool = True,
        applier: Callable[[Entry], Any] | None = None,
        rng: random.Random | None = None,
        session_ttl: float = 3600.0,
        mediator: Mediator | None = None,
        forwarder: ClusterForwarder | None = None,
        bind_host: str | None = None,
    ) -> None:
        super().__init__(
            config,
            scheduler=scheduler,
            storage=storage,
            transport=transport,
            applier=applier,
            rng=rng,
            session_ttl=session_ttl,
        )
        self.add_extension(LeaseMonitor())
        self.add_extension(ClusterCoordinator())
        self.add_extension(SingletonTasks())
        self.add_extension(LeaderJobs())
        self.add_extension(ForwardingGuard(mediator, forwarder=forwarder))
        if serve_http:
            self.add_extension(EmbeddedServer(bind_host))
        self._memory_warning = (
            storage is None and config.persistent_state_path is None and len(config.voters) > 1
        )

    def start(self) -> ClusterNode:
        """Start the node (:meth:`RaftNode.start <catga_sync.runtime.RaftNode.start>`); a member
        of a multi-node cluster on in-memory state says at start what that risks."""
        super().start()
        if self._memory_warning:
            self._memory_warning = False  # once: start is idempotent
            log.warning(
                "node %s keeps its Raft state in memory in a cluster of %d voters: restarted "
                "quickly, it forgets its vote and may vote twice in one term, electing two "
                "leaders. Set persistent_state_path (Cluster__PersistentStatePath, "
                "CATGA_CLUSTER_PERSISTENT_STATE_PATH) to a directory or a database URL.",
                self.node_id,
                len(self.config.voters),
            )
        return self

    @property
    def coordinator(self) -> ClusterCoordinator:
        """The guide's ``IClusterCoordinator``: who leads, and leadership events."""
        return ClusterCoordinator.of(self)

    @property
    def forwarder(self) -> ClusterForwarder:
        """The forwarder this node's forward-to-leader behaviors use unless given another."""
        return default_forwarder(self)

    @property
    def mediator(self) -> Mediator | None:
        """The mediator whose commands ``POST {url_prefix}/forward`` runs, if one was given."""
        guard = self.extensions.get(ForwardingGuard.name)
        return guard.mediator if isinstance(guard, ForwardingGuard) else None
