"""End to end: ``example_flask/run-cluster.sh`` stops every node and exits on Ctrl-C, also
after a node was killed with -9 and when it was started with SIGINT ignored (a background job,
some launchers: the case where it used to stop its nodes and then loop on, printing nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from .harness import ROOT, children_of, free_ports, poll

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "example_flask" / "run-cluster.sh"


def _children(pid: int) -> list[int]:
    return sorted(children_of(pid, "python"))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie has exited too; it waits for its parent (or init) to reap it.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _read_until(stream: IO[str], text: str, lines: list[str]) -> None:
    """Read the script's output up to a line holding ``text`` (pytest-timeout bounds it)."""
    for line in stream:
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"the script ended before printing {text!r}")


@pytest.mark.parametrize(
    ("ignore_sigint", "target"),
    [(False, "script"), (True, "script"), (True, "group")],
    ids=["sigint-to-the-script", "started-ignoring-sigint", "ctrl-c-started-ignoring-sigint"],
)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_after_a_kill_9_stops_every_node_and_exits(
    tmp_path: Path, ignore_sigint: bool, target: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("cluster__")}
    env.update(
        STATE_DIR=str(tmp_path),
        PYTHON=sys.executable,
        PORTS=" ".join(map(str, free_ports(3))),
        PYTHONPATH=str(ROOT),
    )

    def ignore() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    script = subprocess.Popen(
        ["bash", str(SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own group: "group" is a terminal's Ctrl-C
        preexec_fn=ignore if ignore_sigint else None,
    )
    lines: list[str] = []
    nodes: list[int] = []
    try:
        assert script.stdout is not None
        _read_until(script.stdout, " leader: ", lines)
        nodes = poll(
            lambda: len(_children(script.pid)) == 3 and _children(script.pid), 10, "its nodes"
        )
        os.kill(nodes[0], signal.SIGKILL)
        _read_until(script.stdout, " exited (log: ", lines)  # it sees the kill -9
        started = time.monotonic()
        if target == "group":
            os.killpg(script.pid, signal.SIGINT)
        else:
            os.kill(script.pid, signal.SIGINT)
        rest, _ = script.communicate(timeout=20)
        elapsed = time.monotonic() - started
    except BaseException:
        os.killpg(script.pid, signal.SIGKILL)
        for pid in nodes:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        print("".join(lines))
        raise
    output = "".join(lines) + rest
    assert script.returncode == 0, output
    assert "cluster stopped" in output, output
    assert elapsed < 10, output
    assert all(_gone(pid) for pid in nodes), output
