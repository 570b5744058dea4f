"""deploy/: the Kubernetes manifests against the Kubernetes schemas, the Dockerfile's and the
compose file's contracts, and how ``CatgaCluster(app)`` and the embedded server read their
settings (no container runtime: files are read, processes are plain threads)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from flask import Flask
from helpers import free_ports, poll

from catga_sync import ClusterNode
from catga_sync.config import ClusterConfig
from catga_sync.errors import ConfigError
from catga_sync.web.extension import CatgaCluster

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRET = "a-test-secret-of-enough-length"


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


# -- Kubernetes --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,doc", k8s_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_manifest_validates_against_the_kubernetes_schemas(
    name: str, doc: dict[str, Any]
) -> None:
    # strict: an unknown field (a typo, a field at the wrong level) is an error too.
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_manifests_hold_the_issues_contracts() -> None:
    kinds = sorted(doc["kind"] for _, doc in k8s_documents())
    assert kinds == ["PodDisruptionBudget", "Secret", "Service", "Service", "StatefulSet"]
    (sts,) = k8s_kind("StatefulSet")
    services = {doc["metadata"]["name"]: doc for doc in k8s_kind("Service")}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    client = next(doc for name, doc in services.items() if name != sts["spec"]["serviceName"])
    assert client["spec"].get("clusterIP") != "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    pod = sts["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 10
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    (pdb,) = k8s_kind("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (secret,) = k8s_kind("Secret")
    env = {e["name"]: e for e in container["env"]}
    ref = env["Cluster__Secret"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts.keys() <= claims and "/data" in mounts.values()


def test_each_pod_of_the_statefulset_gets_a_valid_config_naming_all_three() -> None:
    (sts,) = k8s_kind("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    headless = sts["spec"]["serviceName"]
    port = container["ports"][0]["containerPort"]
    pods = [f"{sts['metadata']['name']}-{k}" for k in range(sts["spec"]["replicas"])]
    for pod in pods:
        environ = {k: v.replace("$(POD_NAME)", pod) for k, v in plain.items()}
        environ["Cluster__Secret"] = SECRET
        environ.pop("CATGA_BIND_HOST")
        config = ClusterConfig.from_env(environ)
        assert config.local_node_endpoint == f"http://{pod}.{headless}:{port}"
        assert config.node_id == pod
        assert config.voters == {f"http://{p}.{headless}:{port}" for p in pods}
        assert config.persistent_state_path == "/data/raft-state"


# -- Dockerfile and compose --------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_holds_the_issues_contracts() -> None:
    steps = dockerfile_instructions()
    of = lambda word: [rest for w, rest in steps if w == word]  # noqa: E731
    (base,) = of("FROM")
    assert re.fullmatch(r"python:3\.\d+-slim", base)
    (user,) = of("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert any("pip install ." in run for run in of("RUN"))
    assert of("STOPSIGNAL") == ["SIGTERM"]
    (check,) = of("HEALTHCHECK")
    assert "/livez" in check and "/readyz" not in check
    assert json.loads(of("CMD")[0]) == ["python", "-m", "example_flask"]
    assert "CATGA_BIND_HOST=0.0.0.0" in of("ENV")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text("utf-8"))
    return data


def test_the_compose_file_is_the_guides_three_services_with_a_node_id_and_a_secret() -> None:
    data = compose()
    assert sorted(data["services"]) == ["node0", "node1", "node2"]
    for name, service in data["services"].items():
        env = dict(item.split("=", 1) for item in service["environment"])
        assert env["Cluster__LocalNodeEndpoint"] == f"http://{name}:5000"
        assert env["Cluster__NodeId"] == name
        assert env["Cluster__PersistentStatePath"] == "/data/raft-state"
        # Required, never defaulted: ${VAR:?message} makes compose refuse to start without it.
        assert re.fullmatch(r"\$\{CATGA_SECRET:\?[^}]+\}", env["Cluster__Secret"])
        assert service["volumes"] == [f"{name}-data:/data"]
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert grace is not None and int(grace.group(1)) >= 10
        env["Cluster__Secret"] = SECRET
        config = ClusterConfig.from_env(env)
        assert config.voters == {f"http://{n}:5000" for n in data["services"]}


# -- CatgaCluster(app): config= > CATGA_CLUSTER_* > Cluster__* > defaults ----------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    import os

    for key in list(os.environ):
        if key.lower().startswith("cluster__"):
            monkeypatch.delenv(key)
    yield monkeypatch


def config_of(app: Flask, **kwargs: Any) -> ClusterConfig:
    cluster = CatgaCluster(app, **kwargs)
    return cluster.state_of(app).config


def test_catga_cluster_reads_the_guides_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("Cluster__LocalNodeEndpoint", "http://node0:5000")
    clean_env.setenv("Cluster__Members__0", "http://node1:5000")
    clean_env.setenv("Cluster__Members__1", "http://node2:5000")
    clean_env.setenv("Cluster__ElectionTimeout", "00:00:00.300")
    clean_env.setenv("Cluster__Autostart", "false")
    config = config_of(Flask(__name__))
    assert config.local_node_endpoint == "http://node0:5000"
    assert config.members == ("http://node1:5000", "http://node2:5000")
    assert config.election_timeout.total_seconds() == 0.3
    assert config.heartbeat_interval.total_seconds() == 0.05  # the default


def test_flask_keys_win_over_the_environment_key_by_key(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("Cluster__LocalNodeEndpoint", "http://node0:5000")
    clean_env.setenv("Cluster__Members__0", "http://node1:5000")
    clean_env.setenv("Cluster__NodeId", "from-env")
    clean_env.setenv("Cluster__Autostart", "false")
    app = Flask(__name__)
    app.config.update(
        CATGA_CLUSTER_NODE_ID="from-flask",
        CATGA_CLUSTER_ELECTION_TIMEOUT=0.2,
        CATGA_CLUSTER_MEMBERS=None,  # None is unset: the environment's members stay
    )
    config = config_of(app)
    assert config.node_id == "from-flask"
    assert config.election_timeout.total_seconds() == 0.2
    assert config.local_node_endpoint == "http://node0:5000"
    assert config.members == ("http://node1:5000",)


def test_the_config_argument_wins_over_both(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("Cluster__LocalNodeEndpoint", "http://node0:5000")
    clean_env.setenv("Cluster__Bogus", "ignored: config= is taken whole")
    app = Flask(__name__)
    app.config.update(CATGA_CLUSTER_NODE_ID="from-flask")
    given = ClusterConfig(local_node_endpoint="http://localhost:7420", autostart=False)
    assert config_of(app, config=given) is given


def test_without_any_source_the_error_names_both(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"Cluster__LocalNodeEndpoint.*CATGA_CLUSTER_LOCAL"):
        CatgaCluster(Flask(__name__))


def test_a_bad_environment_variable_is_still_an_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("Cluster__ElectionTimout", "150ms")
    app = Flask(__name__)
    app.config.update(CATGA_CLUSTER_LOCAL_NODE_ENDPOINT="http://localhost:7421")
    with pytest.raises(ConfigError, match="Cluster__ElectionTimout"):
        CatgaCluster(app)


# -- the bind address is not the endpoint ------------------------------------------------------


def test_the_embedded_server_binds_bind_host_not_the_advertised_name() -> None:
    (port,) = free_ports(1)
    # A name for the peers that is no address here, as node0 is outside compose's network.
    config = ClusterConfig(local_node_endpoint=f"http://catga-node0.invalid:{port}")
    node = ClusterNode(config, bind_host="127.0.0.1").start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2) as response:
            assert json.loads(response.read())["status"] == "alive"
        poll(lambda: node.status.is_leader, 10, "the single node leads")
    finally:
        node.stop()


def test_without_bind_host_the_endpoints_host_is_bound() -> None:
    (port,) = free_ports(1)
    node = ClusterNode(ClusterConfig(local_node_endpoint=f"http://127.0.0.1:{port}")).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2) as response:
            assert response.status == 200
    finally:
        node.stop()
