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


def create_worker_app(node: ClusterNode) -> Flask:
    config = node.config
    app = Flask(f"catga_sync.worker.{node.node_id}")
    app.register_blueprint(
        create_peer_blueprint(
            lambda: node if node.running else None,
            secret=config.secret,
            max_body_bytes=config.max_message_bytes,
            signature_window=config.signature_window.total_seconds(),
            url_prefix=config.url_prefix,
        )
    )
    app.register_blueprint(create_ops_blueprint(lambda: node))
    if node.mediator is not None:
        app.register_blueprint(
            create_forwarding_blueprint(
                lambda: node if node.running else None,
                node.mediator,
                secret=config.secret,
                max_body_bytes=config.max_message_bytes,
                signature_window=config.signature_window.total_seconds(),
                url_prefix=config.url_prefix,
            )
        )
    return app


__all__ = ["KeepAliveRequestHandler", "create_worker_app", "make_threaded_server"]


def make_threaded_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """A threaded Werkzeug server with keep-alive, for nodes without another WSGI server
    (:mod:`catga_sync.web.keepalive`)."""
    return KeepAliveServer(host, port, app)
