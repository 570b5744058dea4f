"""deploy/docker-compose.yml without a container runtime: its three services as three local
processes, each with the command deploy/Dockerfile runs and exactly the environment the image
and the compose file give it — only the service names become loopback ports, the volumes
temporary directories and ${CATGA_SECRET} a test secret. And a Flask app that does nothing
but ``CatgaCluster(app)``, configured only through the guide's ``Cluster__*`` variables."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .harness import ROOT, ExampleCluster, NodeProcess, free_ports, get_json, poll, started

pytestmark = pytest.mark.e2e

DEPLOY = ROOT / "deploy"
SECRET = "e2e-secret-" + "x" * 24


def dockerfile() -> dict[str, Any]:
    """The Dockerfile's ENV (as a dict), CMD and HEALTHCHECK command (exec form)."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    out: dict[str, Any] = {"env": env}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
        elif word == "CMD":
            out["cmd"] = json.loads(rest)
        elif word == "HEALTHCHECK":
            out["healthcheck"] = json.loads(rest[rest.index("CMD") + 3 :])
    return out


def interpolate(value: str) -> str:
    """Compose's ``${VAR}``, ``${VAR:?err}``, ``${VAR:-default}``, with CATGA_SECRET set."""
    known = {"CATGA_SECRET": SECRET}

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in known:
            raise AssertionError(f"the compose file needs {name}, which the test does not set")
        return known[name]

    return re.sub(r"\$\{(\w+)(?::?[?-][^}]*)?\}", one, value)


@dataclass
class ComposeNode(NodeProcess):
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return self.argv

    def start(self) -> None:
        log = open(self.state_dir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,  # the image's WORKDIR /app holds example_flask; here the repository does
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def base_env() -> dict[str, str]:
    """What a process needs to run here, and nothing of catga's or the guide's."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(ROOT)
    return env


def compose_cluster(tmp_path: Path) -> ExampleCluster:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text("utf-8"))["services"]
    image = dockerfile()
    ports = dict(zip(services, free_ports(len(services)), strict=True))
    cluster = ExampleCluster(tmp_path, size=0)
    for name, service in services.items():
        volume_dir = tmp_path / f"{name}-data"
        volume_dir.mkdir()
        (mount,) = service["volumes"]
        assert mount.endswith(":/data"), mount
        env = {**base_env(), **image["env"]}
        for item in service["environment"]:
            key, value = interpolate(item).split("=", 1)
            for host, port in ports.items():  # the service names: loopback ports
                value = value.replace(f"http://{host}:5000", f"http://localhost:{port}")
            env[key] = (
                value.replace("/data", str(volume_dir), 1) if value[:6] == "/data/" else value
            )
        argv = [sys.executable if image["cmd"][0] == "python" else image["cmd"][0]]
        node = ComposeNode(name, ports[name], [], tmp_path, env=env, argv=argv + image["cmd"][1:])
        cluster.nodes.append(node)
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ExampleCluster]:
    with started(compose_cluster(tmp_path)) as c:
        yield c


def test_the_compose_services_elect_a_leader_and_serve_the_example(
    cluster: ExampleCluster, tmp_path: Path
) -> None:
    poll(lambda: len(cluster.statuses()) == 3, 60, "all three services serving")
    leader = cluster.wait_for_leader(timeout=15)
    for node in cluster:
        status = node.status()
        assert status["node_id"] == node.name  # Cluster__NodeId
        assert len(status["members"]) == 3
    # Their state is on the volume, as Cluster__PersistentStatePath=/data/raft-state says.
    for node in cluster:
        assert (tmp_path / f"{node.name}-data" / "raft-state" / f"{node.name}.sqlite3").exists()

    # The peers sign their requests with Cluster__Secret: an unsigned one is refused.
    assert requests.post(f"{leader.url}/_catga/raft", json={}, timeout=5).status_code in (
        401,
        403,
    )

    # The example's routes: a write through a follower (forwarded to the leader), read back.
    follower = next(n for n in cluster if n is not leader)
    created = requests.post(
        f"{follower.url}/orders",
        json={"customer": "ada", "amount": 12.5},
        headers={"Idempotency-Key": uuid.uuid4().hex},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    order = created.json()
    code, body = get_json(f"{leader.url}/orders/{order['id']}", timeout=5)
    assert code == 200 and body["customer"] == "ada", body
    for node in cluster:
        assert get_json(f"{node.url}/readyz", timeout=5)[0] == 200

    # The image's HEALTHCHECK, run as docker would: in the container's environment.
    check = dockerfile()["healthcheck"]
    for node in cluster:
        assert isinstance(node, ComposeNode)
        argv = [sys.executable if check[0] == "python" else check[0], *check[1:]]
        assert subprocess.run(argv, env=node.env, timeout=10).returncode == 0

    # docker stop: STOPSIGNAL SIGTERM; the leader hands over and exits well within
    # stop_grace_period, and the other two carry on with a new leader.
    term = leader.status()["term"]
    assert leader.terminate(timeout=10) == 0
    assert "handed leadership" in leader.log_text()
    rest = [n for n in cluster if n is not leader]
    poll(
        lambda: any((s := n.status())["role"] == "leader" and s["term"] > term for n in rest),
        10,
        "a new leader among the other two",
    )


BARE_APP = textwrap.dedent(
    """
    from flask import Flask

    from catga_sync import CatgaCluster

    app = Flask(__name__)
    CatgaCluster(app)
    """
)


def test_a_flask_app_doing_only_catga_cluster_app_joins_through_cluster_env(
    tmp_path: Path,
) -> None:
    (tmp_path / "bare_app.py").write_text(BARE_APP, encoding="utf-8")
    ports = free_ports(3)
    endpoints = [f"http://localhost:{p}" for p in ports]
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for k, port in enumerate(ports):
            env = {
                **base_env(),
                "Cluster__LocalNodeEndpoint": endpoints[k],
                "Cluster__NodeId": f"node{k}",
                "Cluster__PersistentStatePath": str(tmp_path / "state"),
                "Cluster__Secret": SECRET,
                **{f"Cluster__Members__{i}": e for i, e in enumerate(endpoints)},
            }
            if k == 0:  # the bare app, under flask run
                env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
                argv = [sys.executable, "-m", "flask", "--app", "bare_app", "run"]
                argv += ["--host", "127.0.0.1", "--port", str(port), "--no-reload"]
            else:  # two plain nodes, configured the same way
                argv = [sys.executable, "-m", "catga_sync", "serve"]
            log = open(tmp_path / f"node{k}.log", "ab")  # noqa: SIM115
            processes.append(
                (
                    f"node{k}",
                    subprocess.Popen(
                        argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
                    ),
                )
            )

        def statuses() -> list[dict[str, Any]] | None:
            out = []
            for port in ports:
                code, body = get_json(f"http://127.0.0.1:{port}/cluster")
                if code != 200:
                    return None
                out.append(body)
            return out

        def agreed() -> list[dict[str, Any]] | None:
            found = statuses()
            if found is None:
                return None
            leaders = {s["leader_endpoint"] for s in found}
            return found if len(leaders) == 1 and None not in leaders else None

        found = poll(agreed, 60, "the three processes agree on a leader")
        bare = found[0]
        assert bare["node_id"] == "node0"
        assert sorted(bare["members"]) == sorted(endpoints)
        assert get_json(f"http://127.0.0.1:{ports[0]}/readyz")[0] == 200
    except BaseException:
        for name, _ in processes:
            print(f"--- {name}\n{(tmp_path / f'{name}.log').read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for _, process in processes:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
