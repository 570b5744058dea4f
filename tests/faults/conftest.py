"""The fault harness needs root, ``ip`` and ``nft``: without them its tests are skipped, unless
``CATGA_FAULTS_REQUIRED=1`` (tox's ``faults`` env, run by .ci/run) makes that a failure, so a
CI machine that lost a tool cannot pass by running nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import FaultCluster, running_fault_cluster
from .netns import available


@pytest.fixture
def netns_required() -> None:
    reason = available()
    if reason is None:
        return
    if os.environ.get("CATGA_FAULTS_REQUIRED") == "1":
        pytest.fail(f"the fault harness cannot run here: {reason}")
    pytest.skip(reason)


@pytest.fixture
def cluster3(netns_required: None, tmp_path: Path) -> Iterator[FaultCluster]:
    with running_fault_cluster(tmp_path, 3) as cluster:
        yield cluster


@pytest.fixture
def cluster5(netns_required: None, tmp_path: Path) -> Iterator[FaultCluster]:
    with running_fault_cluster(tmp_path, 5) as cluster:
        yield cluster
