"""deploy/: the Prometheus alerts (checked and unit-tested with promtool) and the Grafana
dashboard, whose every metric a running node serves on /metrics; and the metric primitives.

promtool comes with Prometheus (``apt-get install prometheus``; .ci/run installs it). Without
it the promtool test is skipped, unless CATGA_PROMTOOL_REQUIRED=1 (tox's py3 env sets it, so
CI cannot pass without running it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from helpers import free_ports, poll

from catga_sync.config import ClusterConfig
from catga_sync.node import ClusterNode
from catga_sync.runtime.measures import Histogram, LabeledCounters

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "catga-cluster.json"
METRIC = re.compile(r"\b(?:catga|process|python)_[a-z0-9_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CATGA_PROMTOOL_REQUIRED") == "1":
            pytest.fail("CATGA_PROMTOOL_REQUIRED=1 and promtool is not installed")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    tool = promtool()
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        done = subprocess.run(
            [tool, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_the_alerts_are_the_guides_four_and_two_leaders_in_one_term() -> None:
    names = re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE)
    assert names == [
        "CatgaNoLeader",
        "CatgaFrequentElections",
        "CatgaRaftStateLarge",
        "CatgaHeartbeatFailures",
        "CatgaTwoLeadersInOneTerm",
    ]
    tested = set(re.findall(r"alertname: (\w+)$", ALERTS_TEST.read_text(), re.MULTILINE))
    assert tested == set(names)


def used_metrics() -> set[str]:
    exprs = re.findall(r"expr: (?:>-\n)?((?:.+\n)+?)\s+(?:for|labels):", ALERTS.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        exprs.extend(target["expr"] for target in panel["targets"])
    exprs.extend(v["definition"] for v in dashboard["templating"]["list"] if "definition" in v)
    return {name for expr in exprs for name in METRIC.findall(expr)}


def served_names(text: str) -> set[str]:
    """Sample names, and the names a family's TYPE line promises (a labelled family with no
    sample yet, say forwarded requests before the first one)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            names.update([name, *(name + s for s in suffixes.get(kind, []))])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_metric_of_the_alerts_and_the_dashboard_is_served(tmp_path: Path) -> None:
    used = used_metrics()
    assert {"catga_has_leader", "catga_commit_latency_seconds_bucket"} <= used
    ports = free_ports(3)
    endpoints = tuple(f"http://127.0.0.1:{p}" for p in ports)
    nodes = [
        ClusterNode(
            ClusterConfig(
                local_node_endpoint=endpoint,
                members=endpoints,
                node_id=f"node{k}",
                election_timeout=timedelta(seconds=0.3),
                heartbeat_interval=timedelta(seconds=0.05),
                persistent_state_path=str(tmp_path),
            )
        )
        for k, endpoint in enumerate(endpoints)
    ]
    try:
        for node in nodes:
            node.start()
        leader = poll(lambda: next((n for n in nodes if n.status.is_leader), None), 10, "a leader")
        leader.propose(b"x")
        poll(lambda: leader.stats.heartbeats_sent.items(), 10, "a heartbeat counted")
        scraped = {}
        for node, endpoint in zip(nodes, endpoints, strict=True):
            response = requests.get(f"{endpoint}/metrics", timeout=5)
            assert response.status_code == 200, response.text
            scraped[node.node_id] = response.text
        for node_id, text in scraped.items():
            missing = used - served_names(text)
            assert not missing, f"{node_id} does not serve {sorted(missing)}"
            assert "process_cpu_seconds_total" in text and "python_info" in text
        documented = (DEPLOY.parent / "docs" / "metrics.rst").read_text()
        families = re.findall(r"^# TYPE (catga_\w+) (\w+)$", scraped[leader.node_id], re.M)
        exported = {
            name if kind != "counter" or name.endswith("_total") else f"{name}_total"
            for name, kind in families
        }
        undocumented = sorted(name for name in exported if f"``{name}``" not in documented)
        assert not undocumented, f"not in docs/metrics.rst: {undocumented}"
        text = scraped[leader.node_id]
        assert f'catga_leading_term{{node_id="{leader.node_id}"}}' in text
        assert f'catga_has_leader{{node_id="{leader.node_id}"}} 1.0' in text
        assert f'catga_elections_won_total{{node_id="{leader.node_id}"}} 1.0' in text
        assert leader.stats.commit_latency_seconds.count >= 1
        assert leader.stats.persist_latency_seconds.count >= 1
        state = re.search(r'catga_state_size_bytes\{node_id="\w+"\} (\S+)', text)
        assert state is not None and float(state.group(1)) > 0
        entries = re.search(r'catga_log_entries\{node_id="\w+"\} (\S+)', text)
        assert entries is not None and float(entries.group(1)) >= 1
        assert 'catga_peer_rpc_latency_seconds_bucket{le="+Inf",node_id=' in text
    finally:
        for node in nodes:
            node.stop(transfer=False)


def test_a_histogram_counts_a_value_equal_to_a_bound_in_that_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value)
    buckets, total = histogram.snapshot()
    assert buckets == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert total == pytest.approx(2.65)
    counters = LabeledCounters()
    counters.inc("b")
    counters.inc("a", 2)
    assert counters.items() == [("a", 2), ("b", 1)]
