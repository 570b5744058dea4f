"""The small Flask app a worker process without its own app serves on its endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask
from werkzeug.serving import BaseWSGIServer

from .blueprint import create_peer_blueprint
from .forwarding import create_forwarding_blueprint
from .keepalive import KeepAliveRequestHandler, KeepAliveServer
from .ops import create_ops_blueprint

if TYPE_CHECKING:
    from ..node import ClusterNode


def register_node_routes(app: Flask, node: ClusterNode, *, ops_routes: bool = True) -> None:
    """Serve ``node`` from ``app``: the peer RPC (and proposals) under the configured prefix,
    the mediator's forwarding endpoint when the node has a mediator, and the operational routes
    (/health, /livez, /readyz, /cluster, /metrics). Used by the Flask extension and by the
    worker app alike."""
    config = node.config
    secret, window = config.secret, config.signature_window.total_seconds()
    limit, prefix = config.max_message_bytes, config.url_prefix

    def running() -> ClusterNode | None:
        return node if node.running else None

    app.register_blueprint(
        create_peer_blueprint(
            running,
            secret=secret,
            max_body_bytes=limit,
            signature_window=window,
            url_prefix=prefix,
        )
    )
    if node.mediator is not None:  # POST {url_prefix}/forward (docs/request-forwarding)
        app.register_blueprint(
            create_forwarding_blueprint(
                running,
                node.mediator,
                secret=secret,
                max_body_bytes=limit,
                signature_window=window,
                url_prefix=prefix,
            )
        )
    if ops_routes:
        app.register_blueprint(create_ops_blueprint(lambda: node))


def create_worker_app(node: ClusterNode) -> Flask:
    app = Flask(f"catga_sync.worker.{node.node_id}")
    register_node_routes(app, node)
    return app


__all__ = [
    "KeepAliveRequestHandler",
    "create_worker_app",
    "make_threaded_server",
    "register_node_routes",
]


def make_threaded_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """A threaded Werkzeug server with keep-alive, for nodes without another WSGI server
    (:mod:`catga_sync.web.keepalive`)."""
    return KeepAliveServer(host, port, app)
