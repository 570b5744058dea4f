"""``catga`` and ``python -m catga_sync``: one parser for every command.

Errors are one line on stderr (``catga: error: ...``) and a non-zero exit: 1 when a command
failed, 2 for a usage error or an unhealthy ``status``. Never a traceback. ``restore`` and
``compact`` work offline, on a stopped node's state; the others talk to a running cluster.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from ..errors import CatgaError
from . import compact, members, restore, serve, snapshot, status, transfer
from .client import (
    CLUSTER_URL_ENV,
    TLS_OPTIONS,
    ClusterClient,
    cluster_urls,
    secret_from,
    tls_from,
)

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def common_options() -> argparse.ArgumentParser:
    """The options of every command that talks to a cluster."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cluster",
        metavar="URL[,URL...]",
        help=f"nodes to ask, the first that answers decides (or {CLUSTER_URL_ENV})",
    )
    common.add_argument("--secret", help="the cluster secret (or Cluster__Secret)")
    for flag, env, what in TLS_OPTIONS:
        common.add_argument(flag, metavar="FILE", help=f"{what} (or {env})")
    common.add_argument("--url-prefix", default="/_catga", help="where the peer routes are")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    return common


def build_parser(prog: str = "catga") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Operate a catga_sync cluster.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parents = [common_options()]
    status.add_parser(sub, parents)
    members.add_parser(sub, parents)
    transfer.add_parser(sub, parents)
    snapshot.add_parser(sub, parents)
    restore.add_parser(sub)
    compact.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(
    argv: Sequence[str] | None = None, *, prog: str = "catga", out: TextIO | None = None
) -> int:
    args = build_parser(prog).parse_args(argv)
    if getattr(args, "serve", False):
        return serve.serve(args)
    stdout = out or sys.stdout
    try:
        if getattr(args, "offline", False):  # restore, compact: on a stopped node's state
            offline: int = args.run(args, stdout)
            return offline
        client = ClusterClient(
            cluster_urls(args.cluster),
            secret=secret_from(args.secret),
            tls=tls_from(args),
            url_prefix=args.url_prefix,
            timeout=args.timeout,
        )
        code: int = args.run(client, args, stdout)
    except CatgaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
