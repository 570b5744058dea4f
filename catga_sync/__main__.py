"""``python -m catga_sync serve``: run a cluster node from the command line.

A node started this way serves the peer RPC and the operational routes (``/health``,
``/cluster``, ...) from an embedded threaded server on its endpoint's port. Settings come from
flags, else from the guide's environment variables (``Cluster__LocalNodeEndpoint``, ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .config import ClusterConfig
from .errors import CatgaError
from .node import ClusterNode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catga_sync")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a cluster node until SIGTERM or Ctrl-C")
    serve.add_argument("--endpoint", help="this node's URL, e.g. http://localhost:6000")
    serve.add_argument("--members", help="comma-separated member endpoints")
    serve.add_argument("--node-id", help="this node's id (default: derived from the endpoint)")
    serve.add_argument("--state", help="state directory or SQLAlchemy URL (default: memory)")
    serve.add_argument("--secret", help="cluster secret (or Cluster__Secret)")
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, Any] = {}
    if args.endpoint:
        overrides["local_node_endpoint"] = args.endpoint
    if args.members is not None:
        overrides["members"] = tuple(m.strip() for m in args.members.split(",") if m.strip())
    if args.node_id:
        overrides["node_id"] = args.node_id
    if args.state:
        overrides["persistent_state_path"] = args.state
    if args.secret:
        overrides["secret"] = args.secret
    done = threading.Event()

    def shut_down(_signum: int, _frame: object) -> None:
        done.set()

    # Before the node starts: a SIGTERM during start-up must still stop it gracefully.
    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    try:
        if any(key.lower().startswith("cluster__") for key in os.environ):
            config = ClusterConfig.from_env(os.environ, **overrides)
        else:
            config = ClusterConfig(**overrides)
        node = ClusterNode(config).start()
    except CatgaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{config.node_id} serving {config.local_node_endpoint}", flush=True)
    done.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
