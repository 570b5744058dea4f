"""The example OrderSystem of the Catga guide, as a Flask app joined to a catga_sync cluster.

Run three nodes: ``example_flask/run-cluster.sh``, or by hand in three terminals:
``python -m example_flask --cluster --port 5000 --node-id node0`` (and 5001/node1, 5002/node2).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

from catga_sync.config import ClusterConfig
from catga_sync.web.extension import CatgaCluster

cluster = CatgaCluster()


def create_app(config: ClusterConfig | None = None, **flask_config: Any) -> Flask:
    """The app factory: reads ``CATGA_CLUSTER_*`` keys unless a ClusterConfig is given."""
    app = Flask(__name__)
    app.config.update(flask_config)
    if config is not None:
        CatgaCluster(app, config=config)
    else:
        cluster.init_app(app)

    @app.get("/")
    def index() -> Any:
        coordinator = CatgaCluster.state_of().node.coordinator
        return jsonify(
            service="example_flask OrderSystem",
            node_id=coordinator.node_id,
            is_leader=coordinator.is_leader,
            leader=coordinator.leader_endpoint,
            see=["/cluster", "/health", "/livez", "/readyz", "/metrics"],
        )

    return app
