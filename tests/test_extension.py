"""The Flask extension: registration, misuse, the reloader, and the operational routes."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo

from catga_sync.config import ClusterConfig
from catga_sync.errors import AlreadyRegisteredError, CatgaError, NotRegisteredError
from catga_sync.web.extension import CatgaCluster, stop_nodes
from example_flask.__main__ import build_config, parse_args

ENDPOINT = "http://localhost:7411"


def make_app(**config: object) -> Flask:
    app = Flask("test_extension")
    app.config.update(CATGA_CLUSTER_LOCAL_NODE_ENDPOINT=ENDPOINT, CATGA_CLUSTER_NODE_ID="solo")
    app.config.update(config)
    return app


@pytest.fixture
def solo_app() -> Iterator[Flask]:
    """A one-node cluster (it elects itself), started by init_app."""
    app = make_app()
    cluster = CatgaCluster(app)
    try:
        cluster.state_of(app).node.wait_for(lambda s: s.is_leader, 10)
        yield app
    finally:
        cluster.stop(app)


def test_init_app_registers_routes_and_starts_the_node(solo_app: Flask) -> None:
    client = solo_app.test_client()
    cluster = client.get("/cluster").get_json()
    assert cluster["node_id"] == "solo"
    assert cluster["role"] == "leader"
    assert cluster["members"] == [ENDPOINT]
    assert client.get("/health").status_code == 200
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    info = client.get("/_catga/raft/info")
    assert info.status_code == 200


def test_the_extension_keeps_its_state_in_app_extensions_not_on_itself(solo_app: Flask) -> None:
    state = solo_app.extensions["catga"]
    assert state.node.node_id == "solo"
    cluster = state.cluster
    assert not any(isinstance(v, Flask) for v in vars(cluster).values())
    with solo_app.app_context():
        assert cluster.coordinator.is_leader
        assert cluster.node is state.node


def test_registering_twice_says_what_to_do(solo_app: Flask) -> None:
    with pytest.raises(CatgaError, match="already registered on this app"):
        CatgaCluster(solo_app)


def test_registering_twice_is_an_already_registered_error(solo_app: Flask) -> None:
    with pytest.raises(AlreadyRegisteredError, match="call init_app\\(\\) once") as caught:
        CatgaCluster(solo_app)
    assert isinstance(caught.value, CatgaError)


def test_an_app_without_the_extension_is_a_not_registered_error() -> None:
    with pytest.raises(NotRegisteredError, match="this app has no CatgaCluster") as caught:
        CatgaCluster.state_of(Flask("bare"))
    assert isinstance(caught.value, CatgaError)
    assert isinstance(caught.value, LookupError)


def test_using_the_extension_on_an_app_without_it_says_what_to_do() -> None:
    app = Flask("bare")
    with app.app_context(), pytest.raises(CatgaError, match="init_app"):
        CatgaCluster().node  # noqa: B018


def test_bad_configuration_fails_at_init_app_not_at_the_first_election() -> None:
    app = make_app(CATGA_CLUSTER_ELECTION_TIMEOUT="50ms")
    with pytest.raises(CatgaError, match="ElectionTimeout"):
        CatgaCluster(app)
    assert "catga" not in app.extensions


def test_the_reloader_watcher_process_does_not_start_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    app = make_app()
    app.debug = True
    cluster = CatgaCluster(app)
    node = cluster.state_of(app).node
    try:
        assert not node.running
        assert app.test_client().get("/health").status_code == 503
        assert app.test_client().get("/livez").status_code == 503
    finally:
        cluster.stop(app)


def test_the_reloader_child_starts_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
    app = make_app()
    app.debug = True
    cluster = CatgaCluster(app)
    try:
        assert cluster.state_of(app).node.running
    finally:
        cluster.stop(app)


def test_autostart_off_leaves_starting_to_the_app() -> None:
    app = make_app(CATGA_CLUSTER_AUTOSTART=False)
    cluster = CatgaCluster(app)
    node = cluster.state_of(app).node
    assert not node.running
    cluster.start(app)
    try:
        node.wait_for(lambda s: s.is_leader, 10)
    finally:
        cluster.stop(app)
    assert not node.running


def test_metrics_in_prometheus_text(solo_app: Flask) -> None:
    pytest.importorskip("prometheus_client")
    response = solo_app.test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert 'catga_is_leader{node_id="solo"} 1.0' in text
    assert "catga_elections_total" in text
    assert "catga_late_ticks_total" in text
    assert 'catga_role{node_id="solo",role="leader"} 1.0' in text


# -- the example's configuration: flags over the guide's environment variables ---------------


def example_args(*argv: str) -> argparse.Namespace:
    return parse_args(list(argv))


def test_example_defaults_to_the_three_local_ports() -> None:
    config = build_config(example_args("--cluster", "--port", "5001", "--node-id", "node1"), {})
    assert config.node_id == "node1"
    assert config.local_node_endpoint == "http://localhost:5001"
    assert config.voters == {f"http://localhost:{p}" for p in (5000, 5001, 5002)}
    assert config.persistent_state_path is None


def test_example_honours_the_guides_environment_and_flags_win() -> None:
    environ = {
        "Cluster__LocalNodeEndpoint": "http://node0:5000",
        "Cluster__Members__0": "http://node1:5000",
        "Cluster__Members__1": "http://node2:5000",
        "Cluster__PersistentStatePath": "/data/raft-state",
        "Cluster__ElectionTimeout": "00:00:00.300",
    }
    config = build_config(example_args(), environ)
    assert config.local_node_endpoint == "http://node0:5000"
    assert config.voters == {"http://node0:5000", "http://node1:5000", "http://node2:5000"}
    assert config.persistent_state_path == "/data/raft-state"
    assert config.election_timeout.total_seconds() == 0.3
    flagged = build_config(example_args("--election-timeout", "0.2", "--node-id", "n0"), environ)
    assert flagged.election_timeout.total_seconds() == 0.2
    assert flagged.node_id == "n0"


def test_example_members_flag_overrides_the_default() -> None:
    config = build_config(
        example_args("--cluster", "--port", "6000", "--members", "http://a:1,http://b:2"), {}
    )
    assert config.voters == {"http://localhost:6000", "http://a:1", "http://b:2"}


def test_example_snapshot_every_flag() -> None:
    # benchmarks/soak.py lowers it to see the log compacted within minutes.
    default = build_config(example_args("--cluster", "--port", "6000"), {})
    assert default.snapshot_every == 10_000
    config = build_config(
        example_args("--cluster", "--port", "6000", "--snapshot-every", "500"), {}
    )
    assert config.snapshot_every == 500


def test_cluster_config_object_can_be_passed_directly() -> None:
    config = ClusterConfig(local_node_endpoint="http://localhost:7412", node_id="direct")
    app = Flask("direct")
    cluster = CatgaCluster(app, config=config)
    try:
        assert cluster.state_of(app).config is config
    finally:
        cluster.stop(app)


# -- the Flask CLI: only `flask run` joins the cluster --------------------------------------------


def _cli_factory(made: list[Flask]) -> FlaskGroup:
    def create_app() -> Flask:
        app = make_app()
        CatgaCluster(app)
        made.append(app)
        return app

    return FlaskGroup(create_app=create_app)


def test_flask_routes_loads_the_app_without_starting_its_node() -> None:
    made: list[Flask] = []
    cli = _cli_factory(made)
    runner = Flask("placeholder").test_cli_runner()
    result = runner.invoke(cli, ["routes"], obj=ScriptInfo(create_app=cli.create_app))
    assert result.exit_code == 0, result.output
    assert "/_catga" in result.output and "/health" in result.output
    (app,) = made
    node = CatgaCluster.state_of(app).node
    assert not node.running
    node.stop()  # nothing to stop; does not raise


def test_flask_cluster_loads_the_app_without_starting_its_node() -> None:
    """``flask cluster ...`` talks to the running nodes: loading the app for it must not start
    a second node with the same id (here no node answers, so the command fails, in one line)."""
    made: list[Flask] = []
    cli = _cli_factory(made)
    runner = Flask("placeholder").test_cli_runner()
    result = runner.invoke(
        cli,
        ["cluster", "--cluster", "http://127.0.0.1:1", "members", "list"],
        obj=ScriptInfo(create_app=cli.create_app),
    )
    assert result.exit_code == 1 and "no node answered" in result.output, result.output
    (app,) = made
    assert not CatgaCluster.state_of(app).node.running


def test_an_app_command_runs_with_the_node_unstarted_unless_it_starts_it() -> None:
    made: list[Flask] = []
    cli = _cli_factory(made)
    seen: list[bool] = []

    @cli.command("peek")
    def peek() -> None:
        app = made[-1]
        seen.append(CatgaCluster.state_of(app).node.running)
        CatgaCluster.state_of(app).cluster.start(app)  # a command that needs the node
        seen.append(CatgaCluster.state_of(app).node.running)
        CatgaCluster.state_of(app).cluster.stop(app)

    runner = Flask("placeholder").test_cli_runner()
    result = runner.invoke(cli, ["peek"], obj=ScriptInfo(create_app=cli.create_app))
    assert result.exit_code == 0, result.output
    assert seen == [False, True]


def test_flask_run_starts_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Flask] = []
    cli = _cli_factory(made)
    served: list[bool] = []

    def run_simple(*args: object, **kwargs: object) -> None:  # instead of serving forever
        served.append(CatgaCluster.state_of(made[-1]).node.running)

    monkeypatch.setattr("flask.cli.run_simple", run_simple)
    runner = Flask("placeholder").test_cli_runner()
    result = runner.invoke(cli, ["run"], obj=ScriptInfo(create_app=cli.create_app))
    try:
        assert result.exit_code == 0, result.output
        assert served == [True]
    finally:
        CatgaCluster.state_of(made[-1]).node.stop()


# -- interpreter exit ------------------------------------------------------------------------------


def test_stop_nodes_stops_started_nodes_and_is_registered_at_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app()
    cluster = CatgaCluster(app)
    node = cluster.state_of(app).node
    node.wait_for(lambda s: s.is_leader, 10)
    stop_nodes()
    assert not node.running
    stop_nodes()  # idempotent: a stopped node stays stopped, quietly


def test_a_process_that_exits_stops_its_node_handing_leadership_over(tmp_path: Path) -> None:
    # A real interpreter exit runs the atexit hook: the node logs that it stopped.
    script = tmp_path / "app.py"
    script.write_text(
        "import logging, sys\n"
        "from flask import Flask\n"
        "from catga_sync.web.extension import CatgaCluster\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "app = Flask('exit')\n"
        f"app.config.update(CATGA_CLUSTER_LOCAL_NODE_ENDPOINT={ENDPOINT!r},\n"
        "                  CATGA_CLUSTER_NODE_ID='solo')\n"
        "node = CatgaCluster(app).state_of(app).node\n"
        "node.wait_for(lambda s: s.is_leader, 10)\n"
        "print('LEADING', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "LEADING" in done.stdout
    assert "node solo stopped" in done.stdout + done.stderr
