"""``catga serve`` (``python -m catga_sync serve``): run a cluster node until SIGTERM or Ctrl-C.

A node started this way serves the peer RPC, the admin and the operational routes
(``/health``, ``/cluster``, ...) from an embedded threaded server on its endpoint's port.
Settings come from flags, else from the guide's environment variables
(``Cluster__LocalNodeEndpoint``, ...). The one command that starts a node.

The address it listens on is a setting of its own, apart from the advertised endpoint:
``--host`` (else ``CATGA_BIND_HOST``, which the image in ``deploy/Dockerfile`` sets to
``0.0.0.0``; else the endpoint's host).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..config import ClusterConfig
from ..errors import CatgaError

__all__ = ["add_parser", "serve"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("serve", help="run a cluster node until SIGTERM or Ctrl-C")
    parser.add_argument("--endpoint", help="this node's URL, e.g. http://localhost:6000")
    parser.add_argument("--members", help="comma-separated member endpoints")
    parser.add_argument(
        "--host",
        default=os.environ.get("CATGA_BIND_HOST") or None,
        help="address to listen on (default: CATGA_BIND_HOST, else the endpoint's host)",
    )
    parser.add_argument("--node-id", help="this node's id (default: derived from the endpoint)")
    parser.add_argument("--state", help="state directory or SQLAlchemy URL (default: memory)")
    parser.add_argument("--secret", help="cluster secret (or Cluster__Secret)")
    parser.add_argument(
        "--client-token", help="bearer token of the client routes (or Cluster__ClientToken)"
    )
    parser.add_argument(
        "--join", action="store_true", help="join a running cluster: wait to be added"
    )
    parser.add_argument("--tls-cert-file", help="this node's PEM certificate (serves https)")
    parser.add_argument("--tls-key-file", help="the certificate's private key")
    parser.add_argument("--tls-ca-file", help="the CA peers' certificates must chain to")
    parser.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        help="mutual TLS: refuse clients without a certificate from --tls-ca-file",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(serve=True)


def serve(args: argparse.Namespace) -> int:
    from ..node import ClusterNode

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
    if args.client_token:
        overrides["client_token"] = args.client_token
    if args.join:
        overrides["join"] = True
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        if getattr(args, name):
            overrides[name] = getattr(args, name)
    if args.tls_require_client_cert:
        overrides["tls_require_client_cert"] = True
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
        node = ClusterNode(config, bind_host=args.host).start()
    except CatgaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{config.node_id} serving {config.local_node_endpoint}", flush=True)
    done.wait()
    node.stop()
    return 0
