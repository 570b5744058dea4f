"""Worker processes without Flask: ``python -m catga_sync serve`` runs a node that serves the
peer RPC and the operational routes from its embedded server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import ROOT, free_ports, get_json, poll

pytestmark = pytest.mark.e2e


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    ports = free_ports(3)
    members = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
    env["PYTHONPATH"] = str(ROOT)
    procs = []
    for k, port in enumerate(ports):
        log = open(tmp_path / f"w{k}.log", "wb")  # noqa: SIM115
        command = [
            sys.executable,
            "-m",
            "catga_sync",
            "serve",
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--members",
            members,
            "--node-id",
            f"worker{k}",
            "--state",
            str(tmp_path),
        ]
        procs.append((port, subprocess.Popen(command, env=env, stdout=log, stderr=log)))
    try:
        yield procs
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_three_workers_elect_a_leader_and_stop_on_sigterm(
    workers: list[tuple[int, subprocess.Popen[bytes]]],
) -> None:
    def leaders() -> list[int]:
        found = []
        for port, _ in workers:
            code, body = get_json(f"http://127.0.0.1:{port}/cluster")
            if code == 200 and body["role"] == "leader":
                found.append(port)
        return found

    leader_port = poll(lambda: (found := leaders()) and len(found) == 1 and found[0], 20, "leader")
    # Every worker serving (its signal handlers are installed by then), not only a majority.
    poll(
        lambda: all(get_json(f"http://127.0.0.1:{port}/cluster")[0] == 200 for port, _ in workers),
        30,
        "all workers serving",
    )
    code, health = get_json(f"http://127.0.0.1:{leader_port}/health")
    assert code == 200
    assert health["results"]["cluster"]["description"] == "This node is the leader"
    for _port, proc in workers:
        proc.send_signal(signal.SIGTERM)
    for _, proc in workers:
        assert proc.wait(20) == 0


def test_serve_refuses_bad_configuration_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "catga_sync", "serve", "--endpoint", "localhost:5000"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "LocalNodeEndpoint" in result.stderr


def test_serve_on_a_port_taken_exits_with_one_clear_line_and_no_traceback(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        serve = ["serve", "--endpoint", f"http://127.0.0.1:{port}", "--state", str(tmp_path)]
        done = subprocess.run(
            [sys.executable, "-m", "catga_sync", *serve, "--secret", "a secret long enough"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert f"cannot serve its endpoint http://127.0.0.1:{port}" in errors[0]
    assert "Address already in use" in errors[0]
    assert "Traceback" not in done.stderr and "Port " not in done.stderr
