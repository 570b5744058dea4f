"""End to end: the example on three real processes serving https with mutual TLS and a
secret (issue 12). They elect, replicate, and forward a POST /orders sent to a follower; a
client without the cluster's certificate is refused. Certificates are made with trustme."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from .harness import ROOT, free_ports, poll

pytestmark = pytest.mark.e2e

SECRET = "e2e tls secret, long enough"


def start_nodes(tmp: Path) -> tuple[list[subprocess.Popen[bytes]], list[str], dict[str, Any]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "node.pem", tmp / "node-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    ports = free_ports(3)
    members = ",".join(f"https://localhost:{p}" for p in ports)
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
    env["PYTHONPATH"] = str(ROOT)
    processes = []
    for k, port in enumerate(ports):
        log = open(tmp / f"node{k}.log", "ab")  # noqa: SIM115
        command = [
            sys.executable, "-m", "example_flask", "--cluster",
            "--port", str(port), "--node-id", f"node{k}", "--members", members,
            "--state-dir", str(tmp / "state"), "--secret", SECRET,
            "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
            "--tls-ca-file", str(ca_file), "--tls-require-client-cert",
        ]  # fmt: skip
        processes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
    client = {"verify": str(ca_file), "cert": (str(cert_file), str(key_file))}
    return processes, [f"https://127.0.0.1:{p}" for p in ports], client


@pytest.fixture
def https_nodes(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, Any]]]:
    processes, urls, client = start_nodes(tmp_path)
    try:
        yield urls, client
    except BaseException:
        for log in sorted(tmp_path.glob("node*.log")):
            print(log.name, log.read_text(errors="replace")[-3000:])
        raise
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def test_an_https_cluster_of_example_processes_forwards_orders(
    https_nodes: tuple[list[str], dict[str, Any]],
) -> None:
    urls, client = https_nodes

    def status(url: str) -> dict[str, Any]:
        return dict(requests.get(f"{url}/cluster", timeout=2, **client).json())

    def leader() -> str | None:
        for url in urls:
            try:
                if status(url).get("role") == "leader":
                    return url
            except requests.RequestException:
                pass
        return None

    chief = poll(leader, 60, "a leader among the https nodes")
    leader_endpoint = status(chief)["leader_endpoint"]
    for url in urls:
        poll(lambda url=url: status(url)["leader_endpoint"] == leader_endpoint, 15, "known")
    follower = next(url for url in urls if url != chief)
    answer = requests.post(
        f"{follower}/orders",
        json={"customer": "ada", "amount": 10},
        headers={"Idempotency-Key": uuid.uuid4().hex},
        timeout=15,
        **client,
    )
    assert answer.status_code == 201, answer.text
    order = answer.json()
    for url in urls:  # replicated: a linearizable read on every node finds it
        got = requests.get(f"{url}/orders/{order['id']}", timeout=15, **client)
        assert (got.status_code, got.json()) == (200, order)
    with pytest.raises(requests.exceptions.SSLError):  # mutual TLS: no certificate, no answer
        requests.get(f"{follower}/orders", timeout=5, verify=client["verify"])
