"""``flask cluster ...``: the ``catga`` commands inside a Flask app's command line.

``status``, ``members list|add|remove`` and ``transfer-leader``, as in ``catga``; by default
they ask the app's own node and its members (from ``CATGA_CLUSTER_*``), signed with the app's
cluster secret. Loading the app for these commands does not start its node (no ``flask``
command but ``run`` does, see :class:`catga_sync.web.extension.CatgaCluster`): a second node
with the same id would fight the running one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from ..config import ClusterConfig
from ..errors import CatgaError
from . import members, snapshot, status, transfer
from .client import CLUSTER_URL_ENV, CliError, ClusterClient, cluster_urls, secret_from

__all__ = ["cluster_cli"]

COMMAND = "cluster"


def _remember_options(cluster_url: str | None, secret: str | None, timeout: float) -> None:
    click.get_current_context().meta["catga_options"] = {
        "cluster": cluster_url,
        "secret": secret,
        "timeout": timeout,
    }


cluster_cli = AppGroup(
    COMMAND,
    callback=_remember_options,
    params=[
        click.Option(["--cluster", "cluster_url"], metavar="URL[,URL...]", help="nodes to ask"),
        click.Option(["--secret"], help="the cluster secret (default: the app's)"),
        click.Option(["--timeout"], type=float, default=10.0, help="seconds per request"),
    ],
    help="Operate the catga_sync cluster (starts no node).",
)


@cluster_cli.result_callback()
def _done(code: Any, **_options: Any) -> None:
    if isinstance(code, int) and code:
        sys.exit(code)


def _client(options: dict[str, Any]) -> ClusterClient:
    state = current_app.extensions.get("catga")  # CatgaCluster's (not imported: a cycle)
    if state is None:
        raise CliError("this app has no CatgaCluster: call CatgaCluster(app) in its factory")
    config: ClusterConfig = state.config
    given = options.get("cluster") or os.environ.get(CLUSTER_URL_ENV)
    urls = cluster_urls(given) if given else [config.local_node_endpoint, *config.members]
    return ClusterClient(
        urls,
        secret=secret_from(options.get("secret")) or config.secret,
        url_prefix=config.url_prefix,
        timeout=options.get("timeout") or 10.0,
        tls=config.tls_client,  # the app's own TlsCaFile and certificate
    )


def _run(job: Callable[[ClusterClient], int]) -> int:
    context = click.get_current_context()
    options = context.meta.get("catga_options", {})
    try:
        return job(_client(options))
    except CatgaError as exc:
        click.echo(f"flask cluster: error: {exc}", err=True)
        return 1


def _echo_out() -> Any:
    return sys.stdout  # click.testing.CliRunner swaps it too


@cluster_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status_command(as_json: bool) -> int:
    """Ask every member how it is (exit 2 without an agreed leader)."""
    return _run(lambda client: status.run(client, _echo_out(), as_json=as_json))


members_group = AppGroup("members", help="List, add or remove members.")
cluster_cli.add_command(members_group)


@members_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def members_list(as_json: bool) -> int:
    """The voters and learners, from the leader."""
    return _run(lambda client: members.show(client, _echo_out(), as_json=as_json))


@members_group.command("add")
@click.argument("endpoint")
@click.option("--learner", is_flag=True, help="keep it a non-voting learner")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def members_add(endpoint: str, learner: bool, as_json: bool) -> int:
    """Add a node started with --join (a learner, promoted once caught up)."""
    return _run(
        lambda client: members.add(client, _echo_out(), endpoint, learner=learner, as_json=as_json)
    )


@members_group.command("remove")
@click.argument("endpoint")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def members_remove(endpoint: str, as_json: bool) -> int:
    """Remove a member (the leader hands over first)."""
    return _run(lambda client: members.remove(client, _echo_out(), endpoint, as_json=as_json))


@cluster_cli.command("transfer-leader")
@click.option("--to", "to", metavar="ENDPOINT", help="the new leader")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def transfer_command(to: str | None, as_json: bool) -> int:
    """Move leadership to another voter."""
    return _run(lambda client: transfer.transfer(client, _echo_out(), to, as_json))


snapshot_group = AppGroup("snapshot", help="Back the cluster up (restore: `catga restore`).")
cluster_cli.add_command(snapshot_group)


@snapshot_group.command("save")
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def snapshot_save(file: str, as_json: bool) -> int:
    """Write a consistent snapshot, taken on the leader, to FILE (atomically)."""
    return _run(lambda client: snapshot.save(client, _echo_out(), file, as_json))
