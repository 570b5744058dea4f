"""The cluster from a process that is not a member: :class:`ClusterClient`.

::

    from catga_sync.client import ClusterClient

    with ClusterClient(["http://node0:5000", "http://node1:5000"], secret=token) as cluster:
        with cluster.lock("nightly-report", ttl=30) as lease:
            write_report(fence=lease.token)

Three modules, read in this order: ``cluster`` (:class:`ClusterClient` and
:class:`ClientStatus`), ``handles`` (what it hands out: a state machine handle, a leadership
watch, a lease's remote renewer), ``http`` (members, retries, errors). The nodes' side is
:mod:`catga_sync.web.client_api`; ``docs/client.rst`` tells the whole story.
"""

from __future__ import annotations

from .cluster import ClientStatus, ClusterClient
from .handles import LeadershipWatcher, RemoteHolding, RemoteStateHandle

__all__ = [
    "ClientStatus",
    "ClusterClient",
    "LeadershipWatcher",
    "RemoteHolding",
    "RemoteStateHandle",
]
