"""The package's top level: the names users need, loaded lazily."""

from __future__ import annotations

import subprocess
import sys

import catga_sync

TOP_LEVEL = [
    "ClusterConfig",
    "ClusterNode",
    "NodeStatus",
    "CatgaCluster",
    "StateMachine",
    "command",
    "query",
    "ReplicatedDict",
    "Mediator",
    "LeaderOnlyBehavior",
    "ForwardToLeaderBehavior",
    "SingletonTaskRunner",
    "TaskContext",
    "DistributedLock",
    "Lease",
    "fenced_update",
    "SimulatedCluster",
]


def test_every_name_in_all_resolves_to_the_object_of_its_module() -> None:
    from catga_sync.locks import DistributedLock
    from catga_sync.node import ClusterNode

    for name in catga_sync.__all__:
        assert getattr(catga_sync, name) is not None, name
    assert catga_sync.ClusterNode is ClusterNode
    assert catga_sync.DistributedLock is DistributedLock
    assert set(TOP_LEVEL) <= set(catga_sync.__all__)


def test_the_names_the_docs_teach_import_from_the_top() -> None:
    namespace: dict[str, object] = {}
    exec(f"from catga_sync import {', '.join(TOP_LEVEL)}", namespace)
    assert all(namespace[name] is getattr(catga_sync, name) for name in TOP_LEVEL)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        catga_sync.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_importing_the_package_loads_neither_flask_nor_sqlalchemy() -> None:
    code = (
        "import sys, catga_sync\n"
        "print(sorted(m for m in ('flask', 'sqlalchemy', 'apscheduler', 'catga_sync.node')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
