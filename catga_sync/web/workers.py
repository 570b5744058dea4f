"""One node per host, any number of workers: gunicorn ``-w N`` with a :class:`CatgaCluster`.

A pre-fork server runs the app in N worker processes, and each builds the same node. The first
to take the host's *worker lock* (an ``flock`` beside the node's state) hosts the node: it
starts it, and serves the node's routes on a loopback port of its own, which it writes with a
random token into the *workers file* beside the lock (mode 0600). Every other worker is a
*local client* (:mod:`catga_sync.runtime.remote`): its node sends commands and queries to the
hosting worker through the client routes (``/_catga/client/...``) on that port and mirrors its
status; the node's peer, admin and operational routes that gunicorn hands to it are relayed to
the hosting worker as they came (:class:`WorkerRelay`), so peers see one node at one endpoint.

Each client worker also waits on the worker lock in a thread. When the hosting worker dies
(kill -9: the kernel drops its lock) one of them takes it and starts the node itself, with the
same node id and storage: to the cluster, a node restart. gunicorn's replacement worker finds
the lock held and becomes a client.

A worker whose lock is held by a process that is not its sibling (another parent process: a
second server started with the same node id by mistake) is refused, as a second process on the
same state always was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, request

from ..errors import StorageError
from ..storage.ownership import already_running, describe_holder
from .keepalive import KeepAliveRequestHandler, KeepAliveServer
from .worker_app import create_worker_app
from .worker_files import (
    NO_HOST,
    RETRY,
    WORKER_TOKEN_HEADER,
    HostInfo,
    lock_holder,
    parent_of,
    worker_paths,
)
from .worker_link import WorkerLink

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from werkzeug.serving import BaseWSGIServer

    from ..node import ClusterNode

__all__ = ["WorkerHosting"]

log = logging.getLogger("catga_sync.workers")

HOST_WAIT = 10.0
"""Seconds a new client worker waits for the hosting worker to publish its port at start."""
TAKEOVER_POLL = 0.05
"""Seconds between a client worker's tries of the worker lock (how soon it sees the host die)."""


_HELD_HERE: set[Path] = set()
"""Worker locks this process holds: a second app of the same node in one process (tests) runs
its node directly, and the storage's ownership lock has the last word."""


class WorkerHosting:
    """The worker lock of one node in this process: host it, or be a local client of the
    worker that does and take over when that one dies."""

    def __init__(self, node: ClusterNode, app: Flask | None = None) -> None:
        self.node = node
        self._app = app
        """The user's app: the node's routes on the loopback port run in its app context (a
        command forwarded to the mediator reaches the handlers and behaviors it knows)."""
        self.lock_path, self.info_path = worker_paths(node)
        self._fd: int | None = None
        self._held = False
        """This object took the worker lock as the host (not as a client waiting for it)."""
        self._server: BaseWSGIServer | None = None
        self._link: WorkerLink | None = None
        self._closed = threading.Event()
        self._lifecycle = threading.Lock()
        """Held while the node is taken over, stopped or released: one at a time."""
        self.role = "starting"
        """``host``, ``client``, ``direct`` (a second app in the hosting process), or
        ``starting``/``stopped``."""

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Host the node if this worker takes the lock first, else become a local client."""
        if self.lock_path in _HELD_HERE:
            self.node.start()
            self.role = "direct"
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise StorageError(
                    f"cannot lock {self.lock_path} for node {self.node.node_id!r}: {exc.strerror}"
                ) from exc
            self._fd = fd
            holder = lock_holder(self.lock_path)
            if holder is not None and parent_of(holder) != os.getppid():
                self.release()  # not a sibling: a second server on this node's state
                raise already_running(
                    self.node.node_id, f"({self.lock_path})", describe_holder({"pid": holder})
                ) from None
            self._become_client()
            return
        self._fd = fd
        self._take_lock_and_host()

    def _take_lock_and_host(self) -> None:
        _HELD_HERE.add(self.lock_path)
        self._held = True
        # At once, before the node starts: a sibling that reads the file sees who holds the
        # lock (port 0: starting), never a file a dead host left behind.
        HostInfo(os.getpid(), os.getppid(), 0, "").write(self.info_path)
        self._host()

    def _host(self) -> None:
        node = self.node
        node.start()
        token = secrets.token_urlsafe(32)
        routes = create_worker_app(node)
        if self._app is not None:
            _in_context_of(self._app, routes)
        app = _require_token(routes, token)
        server = KeepAliveServer("127.0.0.1", 0, app, handler=_SilentHandler)
        self._server = server
        threading.Thread(
            target=server.serve_forever, name=f"catga-workers-{node.node_id}", daemon=True
        ).start()
        HostInfo(os.getpid(), os.getppid(), server.server_port, token).write(self.info_path)
        self.role = "host"
        log.info(
            "worker %d hosts node %s (sibling workers reach it on 127.0.0.1:%d)",
            os.getpid(),
            node.node_id,
            server.server_port,
        )

    def _become_client(self) -> None:
        info = self._wait_for_host(HOST_WAIT)
        self._link = WorkerLink(self.node, self.info_path, self.lock_path)
        self.node.serve_through(self._link)
        self._link.start()
        self.role = "client"
        log.info(
            "worker %d is a local client of node %s (hosted by worker %s)",
            os.getpid(),
            self.node.node_id,
            info.pid if info is not None else "starting",
        )
        threading.Thread(
            target=self._wait_to_host, name=f"catga-takeover-{self.node.node_id}", daemon=True
        ).start()

    def _wait_for_host(self, timeout: float) -> HostInfo | None:
        deadline = time.monotonic() + timeout
        while True:
            info = HostInfo.current(self.info_path, self.lock_path)
            if info is not None or time.monotonic() >= deadline:
                return info
            time.sleep(RETRY)

    # -- take over -------------------------------------------------------------------------------

    def _wait_to_host(self) -> None:
        # Polled, not a blocking flock: a thread blocked in flock cannot be woken when this
        # worker stops, and would lock whatever file its descriptor number names by then.
        while not self._closed.wait(TAKEOVER_POLL):
            with self._lifecycle:
                fd = self._fd
                if fd is None or self._closed.is_set():
                    return
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # the hosting worker lives
                self._take_over()
                return

    def _take_over(self) -> None:
        """With the lock just taken (and ``_lifecycle`` held): host the node here."""
        log.warning(
            "worker %d takes over node %s: the worker that hosted it is gone",
            os.getpid(),
            self.node.node_id,
        )
        self.node.end_client_mode()
        self._link = None
        try:
            self._take_lock_and_host()
        except Exception:
            # A node that failed to start cannot start again (the database still holds the
            # dead worker's session lock, say): let go of the lock and leave, so that gunicorn
            # replaces this worker with one that builds a fresh node.
            log.exception(
                "worker %d could not host node %s; it exits, and a sibling or its replacement "
                "takes the node",
                os.getpid(),
                self.node.node_id,
            )
            self.role = "stopped"
            self._unlock()
            os.kill(os.getpid(), signal.SIGTERM)

    # -- stop --------------------------------------------------------------------------------------

    def stop_taking_over(self) -> None:
        """This worker is stopping (SIGTERM): it must not take the node over any more."""
        self._closed.set()

    def stop(self) -> None:
        """Before the node stops: take over no more, and stop following the host."""
        self._closed.set()
        with self._lifecycle:
            if self._link is not None:
                self._link = None
                self.node.end_client_mode()

    def release(self) -> None:
        """After the node stopped: close the loopback port and drop the worker lock, so that
        a sibling may host the node."""
        self._closed.set()
        with self._lifecycle:
            server, self._server = self._server, None
            if server is not None:
                server.shutdown()
                server.server_close()
            self.role = "stopped"
            self._unlock()

    def _unlock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._held:
            self._held = False
            _HELD_HERE.discard(self.lock_path)
            info = HostInfo.read(self.info_path)
            if info is not None and info.pid == os.getpid():
                with contextlib.suppress(OSError):
                    self.info_path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- relay --------------------------------------------------------------------------------

    def relay_target(self) -> HostInfo | None:
        """Where a client worker sends the node's routes: the hosting worker, or
        :data:`NO_HOST` while there is none (None: serve them here, this worker hosts the
        node)."""
        if self.role != "client":
            return None
        return HostInfo.current(self.info_path, self.lock_path) or NO_HOST


class _SilentHandler(KeepAliveRequestHandler):
    """No access log: the workers' own server logs the requests it relays here, and the
    siblings' long polls would fill the log with a line every few seconds each."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _in_context_of(user_app: Flask, routes: Flask) -> None:
    """Run every request of ``routes`` inside ``user_app``'s app context too. Not the user's
    app itself: the hosting worker starts its node inside ``init_app``, before the app's own
    blueprints are registered, and Flask refuses those once the app has served a request."""
    key = "catga_sync.user_app_context"

    @routes.before_request
    def push() -> None:
        context = user_app.app_context()
        context.push()
        request.environ[key] = context

    @routes.teardown_request
    def pop(_exc: BaseException | None) -> None:
        context = request.environ.pop(key, None)
        if context is not None:
            context.pop()


def _require_token(app: WSGIApplication, token: str) -> WSGIApplication:
    """Only sibling workers (which read the token from the 0600 workers file) may call."""
    expected = token.encode()

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        given = environ.get("HTTP_" + WORKER_TOKEN_HEADER.upper().replace("-", "_"), "")
        if not hmac.compare_digest(given.encode(), expected):
            body = b'{"error":"unauthorized","message":"not a sibling worker of this node"}'
            start_response(
                "401 UNAUTHORIZED",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return guarded
