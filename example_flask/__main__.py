"""``python -m example_flask --cluster --port 5000 --node-id node0`` (the guide's flags).

Without ``--members``, the members are the three local ports 5000-5002. The guide's
environment variables (``Cluster__LocalNodeEndpoint``, ``Cluster__Members__0``,
``Cluster__PersistentStatePath``, ...) are honoured too; flags win. The listening address is
``--host``, else ``CATGA_BIND_HOST`` (``deploy/Dockerfile`` sets ``0.0.0.0``), else the
endpoint's host; it is not the advertised endpoint. This is the command ``deploy/Dockerfile``
runs. SIGTERM and Ctrl-C stop the
node gracefully: a leader hands leadership over first.
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
from urllib.parse import urlsplit

from catga_sync import CatgaCluster, CatgaError, ClusterConfig
from catga_sync.web.worker_app import make_threaded_server

from . import create_app

DEFAULT_PORTS = (5000, 5001, 5002)


def build_config(args: argparse.Namespace, environ: dict[str, str]) -> ClusterConfig:
    overrides: dict[str, Any] = {}
    # With a certificate (--tls-cert-file or Cluster__TlsCertFile) the node serves https, and
    # its own and its default members' endpoints are https://.
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        if getattr(args, name):
            overrides[name] = getattr(args, name)
    if args.tls_require_client_cert:
        overrides["tls_require_client_cert"] = True
    tls = "tls_cert_file" in overrides or any(
        key.lower() == "cluster__tlscertfile" and value for key, value in environ.items()
    )
    scheme = "https" if tls else "http"
    if args.port is not None:
        overrides["local_node_endpoint"] = f"{scheme}://{args.advertise_host}:{args.port}"
    if args.node_id:
        overrides["node_id"] = args.node_id
    if args.members:
        overrides["members"] = tuple(m.strip() for m in args.members.split(",") if m.strip())
    if args.state_dir is not None:
        overrides["persistent_state_path"] = args.state_dir or None
    if args.secret:
        overrides["secret"] = args.secret
    if args.client_token:
        overrides["client_token"] = args.client_token
    if args.election_timeout is not None:
        overrides["election_timeout"] = args.election_timeout
    if args.heartbeat_interval is not None:
        overrides["heartbeat_interval"] = args.heartbeat_interval
    if args.join:
        overrides["join"] = True
    if args.snapshot_every is not None:
        overrides["snapshot_every"] = args.snapshot_every
    from_env = any(key.lower().startswith("cluster__") for key in environ)
    if "members" not in overrides and not any(
        key.lower().startswith("cluster__members") for key in environ
    ):
        overrides["members"] = (
            tuple(f"{scheme}://{args.advertise_host}:{p}" for p in DEFAULT_PORTS)
            if args.cluster
            else ()
        )
    if "local_node_endpoint" not in overrides and not from_env:
        overrides["local_node_endpoint"] = f"{scheme}://{args.advertise_host}:{DEFAULT_PORTS[0]}"
    if from_env:
        return ClusterConfig.from_env(environ, **overrides)
    return ClusterConfig(**overrides)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m example_flask", description=__doc__)
    parser.add_argument("--cluster", action="store_true", help="join the 3-node local cluster")
    parser.add_argument("--port", type=int, help="HTTP port (this node's endpoint)")
    parser.add_argument("--node-id", help="this node's id (default: derived from the endpoint)")
    parser.add_argument("--members", help="comma-separated member endpoints")
    parser.add_argument(
        "--host",
        default=os.environ.get("CATGA_BIND_HOST") or None,
        help="address to listen on (default: CATGA_BIND_HOST, which deploy/Dockerfile sets to "
        "0.0.0.0; else the endpoint's host, or 127.0.0.1 with --port)",
    )
    parser.add_argument("--advertise-host", default="localhost", help="host in endpoints")
    parser.add_argument(
        "--state-dir",
        default=None,
        help="directory for the SQLite state, or a SQLAlchemy URL ('' = in memory)",
    )
    parser.add_argument("--secret", help="cluster secret for signing peer requests")
    parser.add_argument(
        "--client-token",
        help="bearer token ClusterClients must send to /_catga/client (Cluster__ClientToken)",
    )
    parser.add_argument("--election-timeout", help="e.g. 00:00:00.150 or 0.15")
    parser.add_argument("--heartbeat-interval", help="e.g. 00:00:00.050 or 0.05")
    parser.add_argument(
        "--join",
        action="store_true",
        help="join a running cluster: wait to be added (catga members add ENDPOINT)",
    )
    parser.add_argument(
        "--snapshot-every",
        type=int,
        help="applied entries between snapshots (default 10000; soak runs use fewer to see "
        "the log compacted)",
    )
    parser.add_argument("--tls-cert-file", help="this node's PEM certificate: serve https")
    parser.add_argument("--tls-key-file", help="the certificate's private key")
    parser.add_argument("--tls-ca-file", help="the CA peers' certificates must chain to")
    parser.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        help="mutual TLS: refuse peers without a certificate from --tls-ca-file",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--burn-threads",
        type=int,
        default=0,
        help="start N CPU-burning threads (for benchmarks: a busy app must keep its leader)",
    )
    return parser.parse_args(argv)


def burn_cpu() -> None:
    """A CPU-bound pure-Python loop, like a busy request handler holding the GIL."""
    value = 0
    while True:
        for k in range(10_000):
            value = (value + k * k) % 1_000_003


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level.upper() != "DEBUG":
        # One access-log line per peer request (40 a second on a leader) drowns everything else.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        config = build_config(args, dict(os.environ))
        app = create_app(config)
    except CatgaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    node = CatgaCluster.state_of(app).node
    for k in range(args.burn_threads):
        threading.Thread(target=burn_cpu, name=f"burn-{k}", daemon=True).start()
    endpoint = urlsplit(config.local_node_endpoint)
    port = args.port or endpoint.port or (443 if endpoint.scheme == "https" else 80)
    # With --port the endpoint is http(s)://{advertise_host}:{port}: listen on loopback, as
    # before; an endpoint from Cluster__LocalNodeEndpoint is listened on by its host.
    host = args.host or ("127.0.0.1" if args.port else endpoint.hostname or "127.0.0.1")
    server = make_threaded_server(app, host, port, config.server_ssl_context())
    stopping = threading.Event()

    def shut_down(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        logging.getLogger("example_flask").info("signal %d: stopping %s", signum, node.node_id)

        def stop() -> None:
            node.stop()  # a leader hands leadership over first
            server.shutdown()

        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    print(
        f"{config.node_id} serving {config.local_node_endpoint} (members: "
        f"{', '.join(sorted(config.voters))})",
        flush=True,
    )
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
