"""Every example in docs/examples runs, so the documentation cannot rot."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "docs" / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out


def test_simulator_demo_tells_the_story(capsys: pytest.CaptureFixture[str]) -> None:
    from catga_sync.testing import main

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "elected leader" in out
    assert "crash the leader" in out
    assert "restarted from its persisted log and caught up" in out
