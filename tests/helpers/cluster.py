"""One in-process cluster for the tests: N real :class:`~catga_sync.node.ClusterNode` objects
(real threads, real timers) in this process, over the storage and transport a test needs.

::

    with LocalCluster(3) as cluster:           # memory storage, memory network
        leader = cluster.leader()
        leader.propose(b"x")

- storage: ``"memory"`` (:class:`~catga_sync.storage.MemoryStorage`, kept across a restart) or
  ``"sqlite"`` (one SQLite file per node under ``tmp_path``, as ``persistent_state_path``);
- transport: ``"memory"`` (a :class:`~helpers.faults.FaultyNetwork`: partitions, dropped
  messages, watches) or ``"http"`` (each node serves its peer RPC on a free loopback port and
  talks HTTP, inline replies and all, as in production).

Every node's storage and transport are wrapped in the checking pair of
:mod:`helpers.checking` (``checked=False`` leaves them bare): :meth:`LocalCluster.stop` fails
the test if any node acknowledged something before its disk had it. Each storage is also a
:class:`~helpers.faults.FailingStorage`, so a test can break a node's disk
(:meth:`LocalCluster.fail_persist`). Every wait has a deadline and fails saying what it waited
for; nothing sleeps for logic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from catga_sync.config import ClusterConfig
from catga_sync.node import ClusterNode
from catga_sync.storage import MemoryStorage, open_storage
from catga_sync.storage.base import Storage
from catga_sync.transport.base import Transport
from catga_sync.transport.memory import MemoryTransport

from .checking import ContractChecker
from .faults import FailingStorage, FaultyNetwork
from .wait import free_ports, poll

__all__ = ["WAIT", "LocalCluster"]

WAIT = 10.0
"""Seconds any wait of the cluster gives up after by default."""


class LocalCluster:
    """N ClusterNodes in this process. ``nodes[k]`` is node k's current ClusterNode (a new
    object after :meth:`restart`); its id is ``node{k}``.

    ``config`` adds ClusterConfig fields for every node; ``node_options(k)`` adds ClusterNode
    arguments (an ``applier``, a ``mediator``...); ``setup(node)`` runs on every new node before
    it starts (register state machines, singleton tasks). With ``committed_leader``,
    :meth:`leader` waits by default for a leader that has committed its term's no-op.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        storage: str = "memory",
        transport: str = "memory",
        tmp_path: Path | None = None,
        endpoints: Sequence[str] | None = None,
        election_timeout: float = 0.15,
        heartbeat_interval: float = 0.05,
        secret: str | None = None,
        config: dict[str, Any] | None = None,
        node_options: Callable[[int], dict[str, Any]] | None = None,
        setup: Callable[[ClusterNode], object] | None = None,
        checked: bool = True,
        committed_leader: bool = False,
        wait: float = WAIT,
    ) -> None:
        if storage not in ("memory", "sqlite"):
            raise ValueError(f"storage must be 'memory' or 'sqlite', not {storage!r}")
        if transport not in ("memory", "http"):
            raise ValueError(f"transport must be 'memory' or 'http', not {transport!r}")
        if storage == "sqlite" and tmp_path is None:
            raise ValueError("a SQLite cluster needs tmp_path for its files")
        self.size = size
        self.storage_kind = storage
        self.transport_kind = transport
        self.wait = wait
        self.committed_leader = committed_leader
        if endpoints is None:
            if transport == "http":
                endpoints = [f"http://127.0.0.1:{p}" for p in free_ports(size)]
            else:
                endpoints = [f"http://localhost:{7100 + k}" for k in range(size)]
        self.endpoints = list(endpoints)
        self.state_dir = None if tmp_path is None else tmp_path / "raft-state"
        self.configs = [
            ClusterConfig(
                local_node_endpoint=self.endpoints[k],
                members=tuple(self.endpoints),
                node_id=f"node{k}",
                election_timeout=timedelta(seconds=election_timeout),
                heartbeat_interval=timedelta(seconds=heartbeat_interval),
                secret=secret,
                persistent_state_path=None if self.state_dir is None else str(self.state_dir),
                **(config or {}),
            )
            for k in range(size)
        ]
        self._node_options = node_options or (lambda k: {})
        self._setup = setup
        self.checker: ContractChecker | None = ContractChecker() if checked else None
        self.network: FaultyNetwork | None = FaultyNetwork() if transport == "memory" else None
        self._memory: dict[int, Storage] = {}
        self.storages: list[Storage | None] = [None] * size
        """Node k's current storage itself (a MemoryStorage, a SQL storage), unwrapped."""
        self.disks: list[FailingStorage | None] = [None] * size
        """Node k's current storage, as a FailingStorage (see :meth:`fail_persist`)."""
        self._started = [False] * size
        self.nodes: list[ClusterNode] = [self._make(k) for k in range(size)]

    # -- building nodes ------------------------------------------------------------------------

    def _storage(self, k: int) -> Storage:
        config = self.configs[k]
        if self.storage_kind == "memory":
            return self._memory.setdefault(k, MemoryStorage(config.node_id))
        return open_storage(
            config.node_id,
            config.persistent_state_path,
            table_prefix=config.table_prefix,
            sqlite_synchronous=config.sqlite_synchronous,
        )

    def _make(self, k: int) -> ClusterNode:
        config = self.configs[k]
        backing = self.storages[k] = self._storage(k)
        disk = self.disks[k] = FailingStorage(backing)
        storage: Storage = disk
        if self.checker is not None:
            storage = self.checker.storage(disk, config.raft_id)
        transport: Transport
        replies = None
        http = None
        if self.network is not None:
            transport = MemoryTransport(self.network, config.raft_id, config.node_id)
        else:
            from catga_sync.transport.http import HttpTransport

            if self.checker is not None:
                replies = self.checker.reply_receiver(config.raft_id)
            transport = http = HttpTransport(  # as the node builds its own: inline replies too
                sender_id=config.raft_id,
                sender_name=config.node_id,
                peers=[e for e in self.endpoints if e != config.raft_id],
                secret=config.secret,
                url_prefix=config.url_prefix,
                timeout=max(config.election_timeout.total_seconds(), 0.1),
                max_batch_bytes=config.max_message_bytes,
                pipeline_depth=config.pipeline_depth,
                reply_receiver=replies,
                ssl_context=config.tls_client.context(),  # https endpoints: the node's TLS
            )
        if self.checker is not None:
            transport = self.checker.transport(transport, config.raft_id)
        node = ClusterNode(
            config,
            storage=storage,
            transport=transport,
            serve_http=self.network is None,
            **self._node_options(k),
        )
        if replies is not None:
            replies.node = node
        elif http is not None:
            http.reply_receiver = node
        if self._setup is not None:
            self._setup(node)
        return node

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        for k in range(self.size):
            self.start_node(k)
        return self

    def start_node(self, k: int, *, storage: Storage | None = None) -> ClusterNode:
        """Start node ``k``; once it has run and stopped, a new ClusterNode on its storage
        (what a restarted process does), or on ``storage`` (memory clusters: what a crash left
        on disk, say)."""
        node = self.nodes[k]
        if node.running:
            return node
        if storage is not None:
            if self.storage_kind != "memory":
                raise ValueError("only a memory cluster takes a node's storage from the test")
            self._memory[k] = storage
        if self._started[k] or storage is not None:
            node = self.nodes[k] = self._make(k)
        self._started[k] = True
        if self.network is not None:
            self.network.unregister(node.raft_id)
            self.network.register(node)
        return node.start()

    def crash(self, node: ClusterNode | int) -> ClusterNode:
        """Stop a node at once, without handing leadership over, and take it off the network."""
        node = self.node(node)
        node.stop(transfer=False)
        if self.network is not None:
            self.network.unregister(node.raft_id)
        return node

    def restart(self, node: ClusterNode | int, *, storage: Storage | None = None) -> ClusterNode:
        """Crash a node and start a new ClusterNode on its storage (or on ``storage``)."""
        k = self.index(node)
        self.crash(k)
        return self.start_node(k, storage=storage)

    def stop(self) -> None:
        """Stop every node, then fail if any of them broke the Ready contract."""
        for node in self.nodes:
            node.stop(transfer=False)
        if self.checker is not None:
            self.checker.assert_clean()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.stop()
            return
        for node in self.nodes:  # the test failed already: stop, and say what else was seen
            node.stop(transfer=False)
        if self.checker is not None and self.checker.violations and sys.version_info >= (3, 11):
            exc.add_note("Ready contract violations:\n" + "\n".join(self.checker.violations))

    # -- finding nodes -------------------------------------------------------------------------

    def node(self, node: ClusterNode | int) -> ClusterNode:
        return self.nodes[node] if isinstance(node, int) else node

    def index(self, node: ClusterNode | int) -> int:
        if isinstance(node, int):
            return node
        return next(k for k, n in enumerate(self.nodes) if n is node)

    def __iter__(self) -> Iterator[ClusterNode]:
        return iter(self.nodes)

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running]

    def leader(
        self,
        timeout: float | None = None,
        *,
        above: int = 0,
        other_than: ClusterNode | None = None,
        committed: bool | None = None,
        unique: bool = True,
    ) -> ClusterNode:
        """Wait for a leader among the running nodes and return it: one that leads a term above
        ``above``, is not ``other_than`` and, with ``committed``, has committed its term's no-op
        (it can serve linearizable reads). With ``unique`` exactly one running node may say it
        leads; without, the one leading the newest term wins (an old leader that has not heard
        of its successor yet may still say it leads). Two leaders of one term fail at once."""
        if committed is None:
            committed = self.committed_leader

        def find() -> ClusterNode | None:
            leaders = [
                n
                for n in self.running()
                if n.status.is_leader and n.status.term > above and n is not other_than
            ]
            terms = [n.status.term for n in leaders]
            assert len(set(terms)) == len(terms), f"two leaders in one term: {leaders}"
            if committed:
                leaders = [n for n in leaders if n.status.commit_term == n.status.term]
            if not leaders or (unique and len(leaders) > 1):
                return None
            return max(leaders, key=lambda n: n.status.term)

        what = "one leader" if unique else "a leader"
        found: ClusterNode = poll(find, self.wait if timeout is None else timeout, what, 0.005)
        return found

    wait_for_leader = leader

    def followers(self, timeout: float | None = None, **leader: Any) -> list[ClusterNode]:
        """The running nodes other than the leader, once each of them follows it."""
        chosen = self.leader(timeout, **leader)
        found = [n for n in self.running() if n is not chosen]
        for node in found:
            node.wait_for(
                lambda s: s.leader_endpoint == chosen.raft_id,
                self.wait if timeout is None else timeout,
            )
        return found

    def follower(self, timeout: float | None = None, **leader: Any) -> ClusterNode:
        return self.followers(timeout, **leader)[0]

    # -- faults --------------------------------------------------------------------------------

    def _network(self) -> FaultyNetwork:
        if self.network is None:
            raise AssertionError("partitions need the memory network (transport='memory')")
        return self.network

    def isolate(self, node: ClusterNode | int) -> None:
        """Cut every link of ``node`` (memory network)."""
        self._network().isolate(self.node(node).raft_id)

    def partition(self, a: ClusterNode | int, b: ClusterNode | int) -> None:
        """Cut the link between ``a`` and ``b``, both ways (memory network)."""
        self._network().partition(self.node(a).raft_id, self.node(b).raft_id)

    def heal(self) -> None:
        """Restore every cut link (rules of :meth:`FaultyNetwork.drop` stay)."""
        self._network().heal()

    def fail_persist(self, node: ClusterNode | int, error: BaseException | None = None) -> None:
        """Make every later ``persist()`` of ``node``'s storage raise ``error``."""
        disk = self.disks[self.index(node)]
        assert disk is not None
        disk.fail(error)
