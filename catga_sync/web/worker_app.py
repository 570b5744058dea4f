"""The small Flask app a worker process without its own app serves on its endpoint, and the
extension that serves it (:class:`EmbeddedServer`)."""

from __future__ import annotations

import ssl
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Flask
from werkzeug.serving import BaseWSGIServer

from ..errors import ConfigError
from ..forwarding import ForwardingGuard
from ..runtime.extension import Extension
from .blueprint import create_peer_blueprint
from .client_api import create_client_blueprint
from .forwarding import create_forwarding_blueprint
from .keepalive import BindError, KeepAliveRequestHandler, KeepAliveServer
from .ops import create_ops_blueprint

if TYPE_CHECKING:
    from ..runtime.extension import NodeHandle
    from ..runtime.node import RaftNode


def register_node_routes(app: Flask, node: RaftNode, *, ops_routes: bool = True) -> None:
    """Serve ``node`` from ``app``: the peer RPC (and proposals) under the configured prefix,
    the mediator's forwarding endpoint when the node has a mediator, the client routes
    (``{url_prefix}/client``: :mod:`catga_sync.web.client_api`) and the operational routes
    (/health, /livez, /readyz, /cluster, /metrics). Used by the Flask extension and by the
    worker app alike."""
    config = node.config
    secret, window = config.secret, config.signature_window.total_seconds()
    limit, prefix = config.max_message_bytes, config.url_prefix

    def running() -> RaftNode | None:
        return node if node.running else None

    app.register_blueprint(
        create_peer_blueprint(
            running,
            secret=secret,
            max_body_bytes=limit,
            signature_window=window,
            url_prefix=prefix,
            admin=running,
        )
    )
    guard = node.extensions.get(ForwardingGuard.name)
    mediator = guard.mediator if isinstance(guard, ForwardingGuard) else None
    if mediator is not None:  # POST {url_prefix}/forward (docs/request-forwarding)
        app.register_blueprint(
            create_forwarding_blueprint(
                running,
                mediator,
                secret=secret,
                max_body_bytes=limit,
                signature_window=window,
                url_prefix=prefix,
            )
        )
    app.register_blueprint(
        create_client_blueprint(
            node, token=config.client_token, max_body_bytes=limit, url_prefix=prefix
        )
    )
    if ops_routes:
        app.register_blueprint(create_ops_blueprint(lambda: node))


def create_worker_app(node: RaftNode) -> Flask:
    app = Flask(f"catga_sync.worker.{node.node_id}")
    register_node_routes(app, node)
    return app


__all__ = [
    "EmbeddedServer",
    "KeepAliveRequestHandler",
    "create_worker_app",
    "make_threaded_server",
    "register_node_routes",
]


def make_threaded_server(
    app: Flask, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> BaseWSGIServer:
    """A threaded Werkzeug server with keep-alive, for nodes without another WSGI server
    (:mod:`catga_sync.web.keepalive`); TLS with ``ssl_context``
    (:meth:`~catga_sync.config.ClusterConfig.server_ssl_context`)."""
    return KeepAliveServer(host, port, app, ssl_context)


class EmbeddedServer(Extension):
    """Serves the worker app on the node's endpoint from a thread (for a worker process
    without a Flask app of its own; ``ClusterNode(serve_http=False)`` leaves it out)."""

    name = "embedded_server"

    def __init__(self, bind_host: str | None = None) -> None:
        self._bind_host = bind_host or None
        """The address to listen on; None: the endpoint's host."""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def install(self, node: NodeHandle) -> None:
        self._node = node

    def start(self) -> None:
        node = self._node
        parts = urlsplit(node.raft_id)
        host = self._bind_host or parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        app = create_worker_app(node)  # type: ignore[arg-type]  # the node serves the routes
        try:
            self._server = make_threaded_server(app, host, port, node.config.server_ssl_context())
        except (BindError, OSError) as exc:
            raise ConfigError(
                f"node {node.node_id} cannot serve its endpoint {node.raft_id}: {host}:{port} "
                f"cannot be bound ({exc}; is another process, or another node with this "
                "endpoint, listening there?); stop it or give this node another LocalNodeEndpoint"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"catga-http-{node.node_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
