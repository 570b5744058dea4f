"""A client worker's link to the worker that hosts its node (the :class:`HostLink` port).

Commands, queries and locks go through a :class:`~catga_sync.client.ClusterClient` pointed at
the hosting worker's loopback port: the same client, and the same ``/_catga/client`` routes, as
a process outside the cluster uses. A thread long-polls the host's leadership route and feeds
the node's mirrored status, so ``cluster.is_leader``, ``leader_endpoint`` and the leadership
callbacks and signals in this worker follow the host. While no host answers (it is restarting,
or another worker is taking over) calls fail with a typed, retryable error within their
timeout, and the mirror says the node is not running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LeaderUnreachableError, NodeNotRunningError
from ..raft import Role
from ..runtime.status import NodeStatus
from .worker_files import RETRY, WORKER_TOKEN_HEADER, HostInfo

if TYPE_CHECKING:
    import requests
else:
    from .._lazy import requests

if TYPE_CHECKING:
    from ..client import ClusterClient
    from ..fsm import Outcome
    from ..locks import Lease
    from ..node import ClusterNode

__all__ = ["WorkerLink"]

log = logging.getLogger("catga_sync.workers")

POLL_WAIT = 10.0
"""Seconds one long poll of the host's leadership may wait for a change."""


class WorkerLink:
    """The :class:`~catga_sync.runtime.remote.HostLink` of a client worker."""

    def __init__(self, node: ClusterNode, info_path: Path, lock_path: Path) -> None:
        self._node = node
        self._info_path = info_path
        self._lock_path = lock_path
        self._lock = threading.Lock()
        self._info: HostInfo | None = None
        self._client: ClusterClient | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._follow, name=f"catga-mirror-{self._node.node_id}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- the HostLink calls ------------------------------------------------------------------

    def submit(self, data: bytes, *, timeout: float) -> Outcome:
        return self._call(lambda client, left: client.submit(data, timeout=left), timeout)

    def query(
        self,
        machine: str,
        method: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        timeout: float,
    ) -> Any:
        return self._call(
            lambda client, left: client.query(machine, method, args, kwargs, timeout=left),
            timeout,
        )

    def acquire(self, name: str, **options: Any) -> Lease:
        """A lock taken through the host (the lease renews itself through it too, and through
        whichever sibling hosts the node next: the link's one client follows the host)."""
        wait = float(options.get("timeout") or 0.0)
        # Not retried on another host: a second request would be a second place in the queue.
        return self._call(lambda client, left: client.acquire(name, **options), wait, retry=False)

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, fn: Any, timeout: float, *, retry: bool = True) -> Any:
        """``fn(client, seconds_left)`` against the current host. While there is none, wait
        for one; a host that goes away during the call (``LeaderUnreachableError``: it could
        not be reached) is asked again once another worker hosts the node — a command keeps
        its (client, seq), so it applies once. NodeNotRunningError (retryable) at the end."""
        deadline = time.monotonic() + timeout
        while True:
            client = self._current()
            if client is not None:
                try:
                    return fn(client, max(0.05, deadline - time.monotonic()))
                except LeaderUnreachableError:
                    if not retry or time.monotonic() >= deadline:
                        raise
            if time.monotonic() >= deadline or self._closed.is_set():
                raise NodeNotRunningError(
                    f"node {self._node.node_id}: no worker of this host runs it right now "
                    "(the hosting worker is restarting or being replaced); retry shortly"
                )
            self._closed.wait(RETRY)

    def _current(self) -> ClusterClient | None:
        """The client of the worker that hosts the node now (one client for the link's life,
        pointed at each new host, so that a lease keeps renewing across a takeover)."""
        info = HostInfo.current(self._info_path, self._lock_path)
        if info is None:
            return None
        with self._lock:
            if self._closed.is_set():
                return None
            if self._client is None:
                from ..client import ClusterClient

                config = self._node.config
                self._client = ClusterClient(
                    [info.url],
                    secret=config.client_token,
                    headers={WORKER_TOKEN_HEADER: info.token},
                    timeout=max(5.0, self._node.timeouts.election * 10),
                    url_prefix=config.url_prefix,
                )
                self._client.transport.follow_leader = False  # the host forwards
            elif self._info != info:
                self._client.transport.retarget(info.url, {WORKER_TOKEN_HEADER: info.token})
            self._info = info
            return self._client

    def _follow(self) -> None:
        """Mirror the host's status: long polls of its leadership route, for as long as this
        worker is a client."""
        session = requests.Session()
        session.trust_env = False
        version = -1
        while not self._closed.is_set():
            info = HostInfo.current(self._info_path, self._lock_path)
            if info is not None and self._client is not None:
                self._current()  # a new host: leases renew through it from now on
            if info is None:
                self._node.host_lost()
                version = -1
                self._closed.wait(RETRY)
                continue
            try:
                answer = session.get(
                    f"{info.url}{self._node.config.url_prefix}/client/leadership",
                    params={"after": version, "wait": POLL_WAIT},
                    headers=self._headers(info),
                    timeout=POLL_WAIT + 5.0,
                )
                answer.raise_for_status()
                document = answer.json()
            except (requests.RequestException, ValueError) as exc:
                log.debug("node %s: no status from the hosting worker: %s", self._node.node_id, exc)
                self._node.host_lost()
                version = -1
                self._closed.wait(RETRY)
                continue
            version = int(document.get("version", version))
            self._node.publish_mirrored(_status_of(self._node, document))
        session.close()

    def _headers(self, info: HostInfo) -> dict[str, str]:
        headers = {WORKER_TOKEN_HEADER: info.token}
        token = self._node.config.client_token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers


def _status_of(node: ClusterNode, document: Mapping[str, Any]) -> NodeStatus:
    """The host's status document as this worker's mirror of it."""
    running = bool(document.get("running"))
    leader = document.get("leader") if running else None
    return NodeStatus(
        node_id=node.node_id,
        raft_id=node.raft_id,
        role=Role(document.get("role", "follower")) if running else Role.FOLLOWER,
        term=int(document.get("term", 0)),
        leader_raft_id=leader,
        leader_id=document.get("leader_id") if leader else None,
        commit_index=int(document.get("commit_index", 0)),
        commit_term=int(document.get("commit_term", document.get("term", 0))),
        last_applied=int(document.get("last_applied", 0)),
        members=tuple(document.get("members", ())),
        running=running,
    )
