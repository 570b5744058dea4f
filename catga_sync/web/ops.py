"""Operational routes: /health, /livez, /readyz, /cluster and /metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, jsonify

from .. import health, metrics

if TYPE_CHECKING:
    from ..runtime.extension import NodeHandle

log = logging.getLogger("catga_sync.web")


def cluster_document(node: NodeHandle) -> dict[str, Any]:
    """What ``GET /cluster`` returns: this node's view of the cluster, and each extension's
    part (``singleton_tasks``, ``singleton_jobs``...)."""
    status = node.status
    document: dict[str, Any] = {
        "node_id": status.node_id,
        "role": status.role.value,
        "term": status.term,
        "leader_id": status.leader_id,
        "leader_endpoint": status.leader_endpoint,
        "commit_index": status.commit_index,
        "commit_term": status.commit_term,
        "last_applied": status.last_applied,
        "members": list(status.members),
        "learners": list(status.learners),
        "membership": status.membership,
        "running": status.running,
    }
    for extension in node.extensions.values():
        for key, value in extension.describe().items():
            if key in document:  # a node's own fields are not an extension's to change
                log.warning("extension %s describes %r, a key already taken", extension.name, key)
                continue
            document[key] = value
    return document


def create_ops_blueprint(
    get_node: Callable[[], NodeHandle], *, name: str = "catga_ops", url_prefix: str = ""
) -> Blueprint:
    bp = Blueprint(name, __name__, url_prefix=url_prefix or None)

    def respond(result: tuple[dict[str, Any], int]) -> tuple[Response, int]:
        body, code = result
        return jsonify(body), code

    @bp.get("/health")
    def health_view() -> tuple[Response, int]:
        return respond(health.health_response(get_node().status))

    @bp.get("/livez")
    def livez_view() -> tuple[Response, int]:
        return respond(health.liveness_response(get_node().status))

    @bp.get("/readyz")
    def readyz_view() -> tuple[Response, int]:
        return respond(health.readiness_response(get_node().status))

    @bp.get("/cluster")
    def cluster_view() -> Response:
        return jsonify(cluster_document(get_node()))

    @bp.get("/metrics")
    def metrics_view() -> Response | tuple[Response, int]:
        if not metrics.available():
            return jsonify(
                error="metrics_unavailable",
                message="prometheus_client is not installed: pip install 'catga-sync[metrics]'",
            ), 501
        body, content_type = metrics.render(get_node())
        return Response(body, content_type=content_type)

    return bp
