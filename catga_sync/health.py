"""Health checks in the guide's JSON, plus Kubernetes-style liveness and readiness."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime.status import NodeStatus

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


def cluster_check(status: NodeStatus) -> dict[str, Any]:
    """The ``results.cluster`` entry of the guide's health response."""
    if status.running and status.membership == "joining":
        state = UNHEALTHY
        description = (
            "Join mode: waiting to be added to the cluster (catga members add "
            f"{status.raft_id}); it does not vote or campaign meanwhile"
        )
    elif status.running and status.membership == "removed":
        state = UNHEALTHY
        description = (
            "Removed from the cluster: this node no longer votes or campaigns; stop it, or add "
            "it again"
        )
    elif status.running and status.storage_problem is not None:
        state = UNHEALTHY
        description = "Storage unavailable: acknowledging nothing until it is back"
    elif status.running and status.is_leader:
        state, description = HEALTHY, "This node is the leader"
    elif status.running and status.leader_endpoint is not None:
        state, description = HEALTHY, "Cluster has a leader"
    else:
        state, description = UNHEALTHY, "No leader elected in cluster"
    return {
        "status": state,
        "description": description,
        "data": {
            "NodeId": status.node_id,
            "IsLeader": status.running and status.is_leader,
            "LeaderEndpoint": (status.leader_endpoint if status.running else None) or "none",
        },
    }


def health_response(status: NodeStatus) -> tuple[dict[str, Any], int]:
    """``GET /health``: the guide's document, 200 when Healthy and 503 when Unhealthy."""
    check = cluster_check(status)
    body = {"status": check["status"], "results": {"cluster": check}}
    return body, 200 if check["status"] == HEALTHY else 503


def add_cluster_health_check(
    results: MutableMapping[str, Any], status: NodeStatus, name: str = "cluster"
) -> bool:
    """Add the cluster check to an app's own health results (the guide's
    ``AddClusterHealthCheck``); returns True when it is healthy."""
    check = cluster_check(status)
    results[name] = check
    return bool(check["status"] == HEALTHY)


def liveness_response(status: NodeStatus) -> tuple[dict[str, Any], int]:
    """``GET /livez``: the node's Raft loop is running (restart the process when not)."""
    if status.running:
        return {"status": "alive", "node_id": status.node_id}, 200
    return {"status": "dead", "node_id": status.node_id}, 503


def readiness_response(status: NodeStatus) -> tuple[dict[str, Any], int]:
    """``GET /readyz``: running and in touch with a leader (this node or another): it can
    serve, forwarding to the leader where needed. Being the leader is not required."""
    ready = status.running and status.leader_endpoint is not None
    body = {
        "status": "ready" if ready else "not ready",
        "node_id": status.node_id,
        "leader_endpoint": status.leader_endpoint,
    }
    return body, 200 if ready else 503
