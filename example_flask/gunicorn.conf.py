"""gunicorn settings for one node of the example cluster.

    Cluster__LocalNodeEndpoint=http://localhost:5000 Cluster__NodeId=node0 \\
    Cluster__Members__0=http://localhost:5001 Cluster__Members__1=http://localhost:5002 \\
    Cluster__PersistentStatePath=./raft-state \\
    gunicorn -c example_flask/gunicorn.conf.py -b 127.0.0.1:5000 'example_flask:create_app()'

Any number of workers per node (``-w N``, ``WEB_CONCURRENCY``; 3 here): the first worker to
take the node's worker lock hosts the node, the others are its local clients, and a sibling
takes over if the host dies (docs/deployment.rst, "Many workers, one node"). On SIGTERM each
worker hands leadership over at once (``post_worker_init``), finishes its requests, then
stops its node in ``worker_exit``, so the cluster has a new leader within one election round
instead of an election timeout. ``--preload`` is refused: a node does not survive a fork.
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


def post_worker_init(worker: Any) -> None:
    """In the worker, once the app is loaded: on SIGTERM, hand leadership over at once rather
    than after the worker has drained its connections (gunicorn keeps kept-alive ones up to
    2 s, and the peers' always are)."""
    import signal

    from catga_sync.web.extension import hand_off_leadership

    drain = signal.getsignal(signal.SIGTERM)  # gunicorn's: stop accepting, then finish

    def on_sigterm(signum: int, frame: Any) -> None:
        hand_off_leadership()
        if callable(drain):
            drain(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, once it stopped serving: stop its node, handing leadership over."""
    from catga_sync.web.extension import stop_nodes

    stop_nodes()


def on_exit(server: Any) -> None:
    """In the master, just before gunicorn exits: stop any node started there (with
    ``--preload`` the app is loaded in the master; without it there is none)."""
    from catga_sync.web.extension import stop_nodes

    stop_nodes()
