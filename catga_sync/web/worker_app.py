"""The small Flask app a worker process without its own app serves on its endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .blueprint import create_peer_blueprint
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
    return app


class KeepAliveRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler speaking HTTP/1.1, so peers reuse one connection for heartbeats
    instead of opening a connection (and a server thread) for each one."""

    protocol_version = "HTTP/1.1"


def make_threaded_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """A threaded Werkzeug server with keep-alive, for nodes without another WSGI server."""
    return make_server(host, port, app, threaded=True, request_handler=KeepAliveRequestHandler)
