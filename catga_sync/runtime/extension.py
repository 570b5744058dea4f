"""How features plug into the engine: :class:`Extension`, and :class:`NodeHandle`, what an
extension may use of a node.

The engine (:class:`~catga_sync.runtime.RaftNode`) knows no feature. Coordinator, singleton
tasks, leader-gated jobs, locks, forwarding and the embedded HTTP server are extensions: each
is installed into ``node.extensions`` (a dict keyed by the extension's name, as Flask's
``app.extensions``), registers its state machines and status listeners in :meth:`install`,
and is started after the node and stopped before it (in reverse order), like APScheduler's
components. The node never calls a feature otherwise; features watch the node through status
listeners (hashicorp/raft's observers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from ..config import ClusterConfig, Timeouts
    from ..fsm import Outcome, ReplicatedState, StateMachine
    from ..transport.base import Transport
    from .state import StateHandle
    from .status import NodeStats, NodeStatus, StatusListener

__all__ = ["Extension", "NodeHandle"]

T = TypeVar("T")
M = TypeVar("M", bound="StateMachine")


class NodeHandle(Protocol):
    """What an extension may use of a node. Features annotate this, never the node's class."""

    node_id: str
    raft_id: str
    config: ClusterConfig
    timeouts: Timeouts
    state_machines: ReplicatedState
    extensions: dict[str, Extension]
    stats: NodeStats
    """The Raft loop's counters (extensions count their own)."""

    @property
    def status(self) -> NodeStatus: ...

    @property
    def running(self) -> bool: ...

    @property
    def scheduler(self) -> BaseScheduler: ...

    @property
    def transport(self) -> Transport | None: ...

    def add_status_listener(self, listener: StatusListener, *, mirrored: bool = False) -> None: ...

    def wait_for(self, predicate: Callable[[NodeStatus], bool], timeout: float) -> NodeStatus: ...

    def name_of(self, raft_id: str | None) -> str | None: ...

    def register(self, machine: StateMachine) -> StateMachine: ...

    def state(self, machine: type[M] | M, *, timeout: float | None = None) -> StateHandle[M]: ...

    def submit(self, data: bytes, *, timeout: float | None = None) -> Outcome: ...

    def read_barrier(self, *, timeout: float | None = None) -> int: ...

    def wait_applied(self, index: int, timeout: float) -> None: ...

    def run_on_loop(self, fn: Callable[[], T], *, timeout: float | None = None) -> T: ...

    def add_extension(self, extension: E) -> E: ...


class Extension:
    """A feature of a node. Subclass it, set :attr:`name`, and override what you need.

    Lifecycle: :meth:`install` once, when added to a node (before the node starts: register
    state machines and status listeners there); :meth:`start` once the node runs; :meth:`stop`
    when it stops, in the reverse order of installation, before its storage closes. A node that
    fails (its storage broke) does not call :meth:`stop`: its status listeners see ``running``
    turn False.
    """

    name: ClassVar[str] = ""
    """The key in ``node.extensions``: unique on a node."""

    def install(self, node: NodeHandle) -> None:
        """Bind to ``node``: register state machines and status listeners."""

    def start(self) -> None:
        """The node runs: start threads, open sockets."""

    def stop(self) -> None:
        """The node stops: stop threads, close sockets. Must not raise."""

    def describe(self) -> Mapping[str, Any]:
        """This extension's part of ``GET /cluster`` (keys added to the document)."""
        return {}

    def counters(self) -> object | None:
        """A dataclass of :func:`~catga_sync.runtime.status.counter` fields for ``/metrics``."""
        return None


E = TypeVar("E", bound=Extension)
