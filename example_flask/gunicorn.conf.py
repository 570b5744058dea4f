"""gunicorn settings for one node of the example cluster.

    Cluster__LocalNodeEndpoint=http://localhost:5000 Cluster__NodeId=node0 \\
    Cluster__Members__0=http://localhost:5001 Cluster__Members__1=http://localhost:5002 \\
    Cluster__PersistentStatePath=./raft-state \\
    gunicorn -c example_flask/gunicorn.conf.py -b 127.0.0.1:5000 'example_flask:create_app()'

One worker with threads per node (several workers would be several processes claiming one
node). On SIGTERM the master asks the worker to stop; the worker stops serving, then runs
``worker_exit``, which stops the node: a leader hands leadership to its most up-to-date
follower first, so the cluster has a new leader within one election round instead of waiting
an election timeout (docs/deployment.rst, "Graceful shutdown").
"""

from __future__ import annotations

import logging
import os
from typing import Any

workers = int(os.environ.get("WEB_CONCURRENCY", "3"))  # one hosts the node; the rest: clients
threads = 4
graceful_timeout = 10  # seconds to finish in-flight requests before worker_exit runs

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker, before the app is loaded: show the node's log (gunicorn configures
    only its own loggers)."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format=LOG_FORMAT)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, once it stopped serving: stop its node, handing leadership over."""
    from catga_sync.web.extension import stop_nodes

    stop_nodes()


def on_exit(server: Any) -> None:
    """In the master, just before gunicorn exits: stop any node started there (with
    ``--preload`` the app is loaded in the master; without it there is none)."""
    from catga_sync.web.extension import stop_nodes

    stop_nodes()
