"""The Flask extension: ``CatgaCluster(app)`` or ``cluster.init_app(app)``."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import click
from flask import Flask, current_app, has_app_context
from flask.cli import FlaskGroup

from ..cli.flask_cli import cluster_cli
from ..config import ClusterConfig
from ..config_values import Duration
from ..errors import AlreadyRegisteredError, ForkedProcessError, NotRegisteredError
from ..fsm import StateMachine
from ..node import ClusterNode
from ..transport.forward_wire import DEFAULT_FORWARD_TIMEOUT
from .decorators import forward_to_leader, leader_only
from .worker_app import register_node_routes
from .worker_relay import WorkerRelay
from .workers import WorkerHosting

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from ..coordinator import ClusterCoordinator
    from ..forwarding import ClusterForwarder
    from ..mediator import Mediator
    from ..state import StateHandle

M = TypeVar("M", bound=StateMachine)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

log = logging.getLogger("catga_sync.web")

EXTENSION_KEY = "catga"


@dataclass
class ClusterState:
    """What the extension keeps per app, in ``app.extensions["catga"]``."""

    cluster: CatgaCluster
    config: ClusterConfig
    node: ClusterNode
    hosting: WorkerHosting | None = None
    """Under a pre-fork server (gunicorn ``-w N``): whether this worker hosts the node or is a
    local client of the one that does (:mod:`catga_sync.web.workers`)."""


class CatgaCluster:
    """Joins a Flask app to a catga_sync cluster.

    ``init_app`` takes the ``config=`` :class:`ClusterConfig` if given; else it reads each
    setting from the app's ``CATGA_CLUSTER_*`` key, or failing that from the guide's
    ``Cluster__*`` environment variable, or takes its default
    (:meth:`ClusterConfig.from_flask_and_env`). It
    registers the peer RPC blueprint under ``/_catga`` and the operational routes
    (``/health``, ``/livez``, ``/readyz``, ``/cluster``, ``/metrics``), and starts the node in
    the process that serves the app — not in the Werkzeug reloader's watching process, nor in
    a ``flask`` command other than ``flask run`` (``flask routes``, ``flask shell``, ...),
    where the app is only loaded. A started node is stopped at interpreter exit, handing
    leadership over first (:func:`stop_nodes`). The extension never stores the app: per-app
    state lives in ``app.extensions["catga"]``.
    ``forwarder`` is the default :class:`~catga_sync.forwarding.ClusterForwarder` of every
    ``ForwardToLeaderBehavior`` on the app's node (default: HTTP).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        config: ClusterConfig | None = None,
        scheduler: BaseScheduler | None = None,
        ops_routes: bool = True,
        state_machines: Sequence[StateMachine | type[StateMachine]] = (),
        mediator: Mediator | None = None,
        forwarder: ClusterForwarder | None = None,
    ) -> None:
        self._config = config
        self._forwarder = forwarder
        self._mediator = mediator
        self._scheduler = scheduler
        self._ops_routes = ops_routes
        self._state_machines = tuple(state_machines)
        self._deferred: list[Callable[[ClusterNode], object]] = []
        """Registrations made before init_app (module-level decorators): run on every node."""
        self._nodes: weakref.WeakSet[ClusterNode] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise AlreadyRegisteredError(
                "CatgaCluster is already registered on this app: call init_app() once per app "
                "(create one CatgaCluster at module level and call init_app in your factory)"
            )
        # config= > CATGA_CLUSTER_* keys > the guide's Cluster__* environment > defaults.
        config = self._config or ClusterConfig.from_flask_and_env(app.config)
        node = ClusterNode(
            config,
            scheduler=self._scheduler,
            serve_http=False,
            mediator=self._mediator,
            forwarder=self._forwarder,
        )
        for machine in self._state_machines:
            # A class gets a fresh instance per app: two apps must not share state.
            node.register(machine() if isinstance(machine, type) else machine)
        for register in self._deferred:
            register(node)
        self._nodes.add(node)
        state = app.extensions[EXTENSION_KEY] = ClusterState(self, config, node)
        register_node_routes(app, node, ops_routes=self._ops_routes)
        # In a worker that does not host the node, its routes go to the one that does.
        app.wsgi_app = WorkerRelay(  # type: ignore[method-assign]
            app.wsgi_app,
            lambda: state.hosting.relay_target() if state.hosting is not None else None,
            url_prefix=config.url_prefix,
            ops=self._ops_routes,
            max_body_bytes=max(config.max_message_bytes, 1 << 20),
        )
        app.cli.add_command(cluster_cli)  # `flask cluster ...` (catga_sync.cli)
        if not config.autostart:
            return
        if _in_reloader_parent(app):
            log.info(
                "catga_sync: not starting node %s in the reloader's watcher process; it starts "
                "in the serving child",
                config.node_id,
            )
            return
        command = _flask_command()
        if command is not None and command != "run":
            log.info(
                "catga_sync: not starting node %s in `flask %s`: only a serving process joins "
                "the cluster (call cluster.start() in a command that needs the node)",
                config.node_id,
                command,
            )
            return
        _start(node, state, app)

    # -- access from views and app code --------------------------------------------------------

    @staticmethod
    def state_of(app: Flask | None = None) -> ClusterState:
        target = app or current_app
        try:
            state: ClusterState = target.extensions[EXTENSION_KEY]
        except KeyError:
            raise NotRegisteredError(
                "this app has no CatgaCluster: call CatgaCluster(app) or cluster.init_app(app)"
            ) from None
        return state

    def node_for(self, app: Flask | None = None) -> ClusterNode:
        return self.state_of(app).node

    @property
    def node(self) -> ClusterNode:
        """The current app's node (inside an app or request context)."""
        return self.state_of().node

    @property
    def coordinator(self) -> ClusterCoordinator:
        """The current app's coordinator (inside an app or request context)."""
        return self.state_of().node.coordinator

    def state(self, machine: type[M] | M, app: Flask | None = None) -> StateHandle[M]:
        """A handle on a registered state machine of the current app's node."""
        return self.state_of(app).node.state(machine)

    @property
    def mediator(self) -> Mediator | None:
        """The mediator whose commands this app's forwarding endpoint runs, if one was given."""
        return self._mediator

    def leader_only(self, view: F) -> F:
        """View decorator: run on the leader only; a follower answers 503 ``not_leader`` naming
        the leader (the guide's leader-only behavior, for plain routes)."""
        return leader_only(lambda: self.state_of().node)(view)

    @overload
    def forward_to_leader(self, view: F, /) -> F: ...

    @overload
    def forward_to_leader(
        self, view: None = None, /, *, timeout: Duration = ...
    ) -> Callable[[F], F]: ...

    def forward_to_leader(
        self, view: F | None = None, /, *, timeout: Duration = DEFAULT_FORWARD_TIMEOUT
    ) -> F | Callable[[F], F]:
        """View decorator: run on the leader; a follower relays the request there and returns
        its answer, status and headers intact (``@cluster.forward_to_leader`` or
        ``@cluster.forward_to_leader(timeout=5)``)."""
        decorate: Callable[[F], F] = forward_to_leader(
            lambda: self.state_of().node, timeout=timeout
        )
        return decorate if view is None else decorate(view)

    def start(self, app: Flask | None = None) -> ClusterNode:
        """Start the node explicitly (for ``CATGA_CLUSTER_AUTOSTART = False``, or in a
        ``flask`` command, where init_app leaves it unstarted); it stops at interpreter exit."""
        target = app or current_app._get_current_object()  # type: ignore[attr-defined]
        state = self.state_of(target)
        return _start(state.node, state, target)

    def stop(self, app: Flask | None = None, **kwargs: Any) -> None:
        """Stop the node, handing leadership over first when it leads."""
        self.state_of(app).node.stop(**kwargs)

    def lock(
        self,
        name: str,
        *,
        ttl: Duration = 30.0,
        timeout: Duration | None = None,
        owner: str | None = None,
        app: Flask | None = None,
    ) -> Any:
        """``with cluster.lock("name", ttl=10) as lease:`` — a cluster-wide lock, acquired from
        any node (waiting up to ``timeout`` seconds; None: as long as it takes; 0: not at all)
        and released when the block ends; raises
        :class:`~catga_sync.errors.LockNotAcquiredError`. ``lease.token`` is its fencing
        token (:func:`catga_sync.locks.lock <catga_sync.locks.lease.lock>`, a context manager of
        :class:`~catga_sync.locks.lease.Lease`)."""
        from ..locks import lock

        node = self.state_of(app).node
        return lock(node, name, ttl=ttl, timeout=timeout, owner=owner)

    def add_singleton_task(
        self, task: T, *, name: str | None = None, app: Flask | None = None
    ) -> T:
        """Run ``task`` on whichever node leads (the guide's ``AddSingletonTask``): a
        :class:`~catga_sync.singleton.SingletonTaskRunner` (instance or subclass) or a function
        ``fn(ctx)``. At module level it applies to every app this extension joins (before or
        after ``init_app``); with ``app=`` or in an app context, to that app's node only.
        ``SingletonTasks.of(node).add(...)`` does the same without Flask."""
        from ..singleton import SingletonTasks

        def register(node: ClusterNode) -> object:
            return SingletonTasks.of(node).add(task, name=name)

        self._register(register, app)
        return task

    def singleton_job(
        self,
        trigger: Any = None,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        name: str | None = None,
        *,
        app: Flask | None = None,
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorator: an APScheduler job that runs on the leader only
        (``@cluster.singleton_job("interval", seconds=30, id="purge")``, the shape of
        ``scheduled_job``), at least once per due fire time (:mod:`catga_sync.jobs`). At module
        level it applies to every app this extension joins; with ``app=`` or in an app
        context, to that app's node only. ``scheduler=`` puts the job on another scheduler
        than the node's (Flask-APScheduler's ``aps.scheduler``)."""
        from ..jobs import LeaderJobs, check_job_options

        check_job_options(trigger, options)  # bad options fail here, not at init_app

        def decorate(func: F) -> F:
            def register(node: ClusterNode) -> object:
                return LeaderJobs.of(node).add_job(func, trigger, args, kwargs, id, name, **options)

            self._register(register, app)
            return func

        return decorate

    def _register(self, register: Callable[[ClusterNode], object], app: Flask | None) -> None:
        """Run ``register`` on the app's node now (with ``app=`` or in an app context), or on
        every node this extension has made and will make (at module level, the Flask idiom)."""
        if app is not None or has_app_context():
            register(self.state_of(app).node)
            return
        self._deferred.append(register)
        for node in list(self._nodes):
            register(node)


# -- lifecycle helpers ---------------------------------------------------------------------------

_started_nodes: weakref.WeakSet[ClusterNode] = weakref.WeakSet()
"""Nodes the extension started in this process (a forked child forgets its parent's)."""


_hostings: weakref.WeakKeyDictionary[ClusterNode, WorkerHosting] = weakref.WeakKeyDictionary()


def _start(
    node: ClusterNode, state: ClusterState | None = None, app: Flask | None = None
) -> ClusterNode:
    role = _gunicorn_process()
    if role == "master":
        raise ForkedProcessError(
            f"node {node.node_id}: gunicorn --preload loads the app in the master, which then "
            "forks its workers, and a node's threads and connections do not survive a fork. "
            "Remove --preload (preload_app = False): each worker builds the app, one of them "
            "hosts the node and the others are its local clients."
        )
    if role == "worker" and node not in _hostings:
        # gunicorn -w N: one worker hosts the node, the others are its local clients.
        hosting = _hostings[node] = WorkerHosting(node, app)
        if state is not None:
            state.hosting = hosting
        hosting.start()
    elif node not in _hostings:
        node.start()
    _started_nodes.add(node)
    return node


def _gunicorn_process() -> str | None:
    """``"worker"`` in a gunicorn worker (its siblings build the same node), ``"master"`` in
    gunicorn's arbiter loading the app for ``--preload``, None elsewhere (a plain process,
    ``flask run``, tests). A worker runs in the frame of the arbiter's ``spawn_worker`` that
    forked it; the preloading master, in its ``setup``."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_filename.endswith(os.path.join("gunicorn", "arbiter.py")):
            if code.co_name == "spawn_worker":
                return "worker"
            if code.co_name == "setup":
                return "master"
        frame = frame.f_back  # type: ignore[assignment]
    # Not in the worker's boot (cluster.start() from a request, say): a worker's parent is
    # the arbiter, which the preloading master is not.
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return "worker" if b"gunicorn" in parent else None


def stop_nodes(*, transfer: bool = True, timeout: Duration | None = None) -> None:
    """Stop every node a :class:`CatgaCluster` started in this process, a leader handing
    leadership over first (``node.stop()``; stopping a stopped node does nothing).

    Registered with :mod:`atexit` (logging, registered earlier, still works then); call it from a
    server's own exit hook (gunicorn's ``worker_exit``, ``example_flask/gunicorn.conf.py``),
    which runs before the interpreter's exit and while the peers can still be reached.
    """
    for node in list(_started_nodes):
        hosting = _hostings.get(node)
        try:
            if hosting is not None:
                hosting.stop()  # no takeover by this worker from now on
            node.stop(transfer=transfer, timeout=timeout)
        except Exception:  # at exit: stop the others all the same
            log.exception("catga_sync: node %s failed to stop", node.node_id)
        finally:
            if hosting is not None:
                hosting.release()  # after the node stopped: a sibling may host it now


def hand_off_leadership(*, timeout: Duration | None = None) -> threading.Thread:
    """Start handing leadership over from every node this process started and leads (in a
    thread, so a signal handler may call it); the nodes keep running until they stop. A
    gunicorn worker that is a local client of its node stops waiting to take it over.

    For a server that stops slowly: gunicorn 23+ keeps a stopping worker's kept-alive
    connections open up to 2 s before ``worker_exit`` runs, and the peers' connections are
    always kept alive, so a hand-off left to ``worker_exit`` would come 2 s late.
    ``example_flask/gunicorn.conf.py`` calls this on SIGTERM."""

    for hosting in list(_hostings.values()):
        hosting.stop_taking_over()  # a stopping worker must not start the node its host drops

    def run() -> None:
        for node in list(_started_nodes):
            try:
                node.hand_off(timeout)
            except Exception:  # the others all the same
                log.exception("catga_sync: node %s failed to hand leadership over", node.node_id)

    thread = threading.Thread(target=run, name="catga-hand-off", daemon=True)
    thread.start()
    return thread


atexit.register(stop_nodes)

if hasattr(os, "register_at_fork"):
    # The parent's nodes are the parent's to stop: their threads did not survive the fork.
    def _forget_the_parents() -> None:
        _started_nodes.clear()
        _hostings.clear()

    os.register_at_fork(after_in_child=_forget_the_parents)


def _flask_command() -> str | None:
    """The ``flask`` command loading the app (``"run"``, ``"routes"``, ``"flask"`` while the
    group lists or looks up commands), or None outside the Flask CLI (gunicorn, tests, scripts,
    your own click program)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not isinstance(ctx.find_root().command, FlaskGroup):
        return None
    return ctx.info_name or ctx.command.name or "flask"


def _in_reloader_parent(app: Flask) -> bool:
    """True in the process that only watches files for the Werkzeug reloader.

    The reloader runs the app in a child with ``WERKZEUG_RUN_MAIN=true``; in debug mode,
    without that variable, we are (or may be) the watcher, which must not join the cluster.
    (Debug mode without the reloader: call ``cluster.start()`` yourself.)
    """
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        return False
    return bool(app.debug)
