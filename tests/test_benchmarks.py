"""The benchmarks' pure helpers: the etcd members' command lines and the ratio lines.

No benchmark runs here, and nothing is timed: the scripts print figures, the tests check only
how they are put together.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Appended, not prepended: benchmarks/core.py must not shadow anything the suite imports.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

from etcd_cluster import Member, b64, member_command, members_on
from memory import _package
from report import Comparison, command_line, growth, ratio_block, ratio_line


def test_members_take_their_ports_two_by_two() -> None:
    assert members_on([1, 2, 3, 4]) == [Member("etcd0", 1, 2), Member("etcd1", 3, 4)]
    with pytest.raises(ValueError):
        members_on([1, 2, 3])


def test_a_member_starts_a_new_cluster_of_all_three_on_loopback() -> None:
    members = members_on([2379, 2380, 2381, 2382, 2383, 2384])
    command = member_command(members[1], members, Path("/tmp/d/etcd1"), token="t")

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert command[0] == "etcd"
    assert value("--name") == "etcd1"
    assert value("--data-dir") == "/tmp/d/etcd1"
    assert value("--listen-client-urls") == value("--advertise-client-urls")
    assert value("--listen-client-urls") == "http://127.0.0.1:2381"
    assert value("--initial-advertise-peer-urls") == "http://127.0.0.1:2382"
    assert value("--initial-cluster") == (
        "etcd0=http://127.0.0.1:2380,etcd1=http://127.0.0.1:2382,etcd2=http://127.0.0.1:2384"
    )
    assert value("--initial-cluster-state") == "new"
    assert value("--snapshot-count") == "10000"
    # etcd's default durability: nothing that turns its fsync off
    assert not any("fsync" in part for part in command)


def test_gateway_keys_and_values_are_base64() -> None:
    assert b64("bench-counter") == "YmVuY2gtY291bnRlcg=="
    assert b64(b"\x00") == "AA=="


def test_a_latency_ratio_says_lower_is_faster_and_checks_its_aim() -> None:
    line = ratio_line("sequential p50", 2.0, 1.0, "latency", 1.2)
    assert line == "  sequential p50: 2.00 (latency: < 1 is faster; aim <= 1.2: not met)"
    assert ratio_line("x", 1.0, 1.0, "latency", 1.0).endswith("aim <= 1.0: met)")


def test_a_throughput_ratio_says_higher_is_faster() -> None:
    assert ratio_line("16 threads", 300.0, 200.0, "throughput") == (
        "  16 threads: 1.50 (throughput: > 1 is faster)"
    )
    assert ratio_line("x", 1.0, 2.0, "throughput", 1.5).endswith("aim >= 1.5: not met)")


def test_a_ratio_without_a_denominator_is_not_a_number() -> None:
    assert ratio_line("x", 1.0, 0.0, "latency") == "  x: n/a (latency: < 1 is faster)"


def test_a_ratio_block_leaves_out_what_was_not_measured() -> None:
    block = ratio_block(
        "etcd",
        [Comparison("a", 1.0, 2.0, "latency"), Comparison("b", None, 2.0, "throughput")],
    )
    assert block == ["catga_sync / etcd", "  a: 0.50 (latency: < 1 is faster)"]
    assert ratio_block("etcd", [Comparison("b", 1.0, None, "latency")]) == []


def test_the_command_line_is_the_one_to_type_again() -> None:
    argv = [str(Path(__file__).resolve().parents[1] / "benchmarks" / "locks.py"), "--ops", "3"]
    assert command_line(argv) == "command: python benchmarks/locks.py --ops 3"


def test_growth_is_each_figure_over_the_first() -> None:
    assert growth([2.0, 2.5, 4.2]) == "1.00x / 1.25x / 2.10x"
    assert growth([0.0, 1.0]) == "n/a / n/a"


@pytest.mark.parametrize(
    ("filename", "package"),
    [
        ("/v/lib/python3.11/site-packages/sqlalchemy/sql/base.py", "sqlalchemy"),
        ("/v/lib/python3.11/site-packages/typing_extensions.py", "typing_extensions"),
        ("/work/main/catga_sync/raft/core.py", "catga_sync"),
        ("/work/main/example_flask/orders.py", "example_flask"),
        ("<frozen importlib._bootstrap_external>", "<frozen or generated>"),
        ("/usr/lib/python3/dist-packages/yaml/__init__.py", "yaml"),
        ("/usr/lib/python3.11/json/decoder.py", "stdlib"),
    ],
)
def test_memory_puts_each_allocation_under_its_package(filename: str, package: str) -> None:
    assert _package(filename) == package
