"""The Raft core stays pure: standard library and ``catga_sync.errors`` only, and no I/O.

``catga_sync/raft/__init__.py`` promises that nothing under ``catga_sync.raft`` touches threads,
sockets, files, databases, the clock or the global random generator. This module checks the
promise statically, with :mod:`ast`, so a stray ``import time`` fails the build with its
``file:line``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RAFT_DIR = REPO_ROOT / "catga_sync" / "raft"
RAFT_PACKAGE = "catga_sync.raft"
ALLOWED_FIRST_PARTY = ("catga_sync.errors",)

FORBIDDEN_STDLIB = frozenset(
    {
        # threads and processes
        "threading",
        "_thread",
        "multiprocessing",
        "concurrent",
        "subprocess",
        "asyncio",
        "signal",
        # sockets, networking, event loops
        "socket",
        "socketserver",
        "ssl",
        "select",
        "selectors",
        "urllib",
        "http",
        # files and databases
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "sqlite3",
        # the clock
        "time",
        "datetime",
        # global or OS randomness
        "secrets",
    }
)
"""Standard-library modules the pure core must not import (matched on the top-level name)."""

RANDOM_ALLOWED_ATTRIBUTES = frozenset({"Random"})
"""On the ``random`` module only the class may be touched: randomness must be injected."""

FORBIDDEN_BUILTIN_CALLS = frozenset({"open", "input", "print", "breakpoint", "__import__"})
"""Builtins that do I/O or import behind the checker's back."""


def _package_of(path: Path, root: Path) -> str:
    """The dotted package a module at ``path`` belongs to (for resolving relative imports)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str | None, level: int, package: str) -> str:
    """Resolve ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    base = package.split(".")
    if level - 1 > len(base) - 1:
        return "<relative import beyond top-level package>"
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_allowed(module: str) -> bool:
    top = module.split(".")[0]
    if module == RAFT_PACKAGE or module.startswith(RAFT_PACKAGE + "."):
        return True
    if any(module == m or module.startswith(m + ".") for m in ALLOWED_FIRST_PARTY):
        return True
    return top in sys.stdlib_module_names and top not in FORBIDDEN_STDLIB


def _why_forbidden(module: str) -> str:
    top = module.split(".")[0]
    if top in FORBIDDEN_STDLIB:
        return "forbidden stdlib module (I/O, time or global randomness)"
    return "not stdlib, catga_sync.raft or catga_sync.errors"


def check_source(source: str, filename: str, package: str) -> list[str]:
    """Every purity violation in one module's source, as ``file:line: message`` strings."""
    tree = ast.parse(source, filename=filename)
    found: list[tuple[int, str]] = []
    random_names: set[str] = set()

    def report(node: ast.AST, message: str) -> None:
        line = getattr(node, "lineno", 0)
        found.append((line, f"{filename}:{line}: {message}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_allowed(alias.name):
                    report(node, f"import {alias.name}: {_why_forbidden(alias.name)}")
                if alias.name == "random":
                    random_names.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            for alias in node.names:
                if base == "random" and alias.name not in RANDOM_ALLOWED_ATTRIBUTES:
                    report(node, f"from random import {alias.name}: global random generator")
                if _is_allowed(base):
                    continue
                # ``from catga_sync import errors`` imports the submodule catga_sync.errors.
                candidate = f"{base}.{alias.name}" if base else alias.name
                if not _is_allowed(candidate):
                    reason = _why_forbidden(candidate)
                    report(node, f"from {base} import {alias.name} ({candidate}): {reason}")

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in random_names
            and node.attr not in RANDOM_ALLOWED_ATTRIBUTES
        ):
            report(node, f"{node.value.id}.{node.attr}: module-level (global) randomness")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_BUILTIN_CALLS
        ):
            report(node, f"{node.func.id}(): builtin I/O or dynamic import")
    return [message for _, message in sorted(found)]


def check_tree(root: Path, package_dir: Path) -> list[str]:
    problems: list[str] = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        source = path.read_text(encoding="utf-8")
        problems.extend(check_source(source, relative, _package_of(path, root)))
    return problems


# --------------------------------------------------------------------------------------------
# The real package


def test_raft_package_has_modules_to_check() -> None:
    names = {p.name for p in RAFT_DIR.rglob("*.py")}
    assert {"__init__.py", "core.py", "codec.py", "log.py", "messages.py"} <= names


def test_raft_package_imports_only_stdlib_itself_and_errors_and_does_no_io() -> None:
    problems = check_tree(REPO_ROOT, RAFT_DIR)
    assert not problems, "catga_sync.raft must stay pure:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# The checker catches what it should (so a green run above means something)


def test_checker_reports_socket_and_third_party_imports_with_file_and_line() -> None:
    source = "import json\nimport socket\nimport requests\n"
    problems = check_source(source, "catga_sync/raft/bad.py", RAFT_PACKAGE)
    assert len(problems) == 2
    assert problems[0].startswith("catga_sync/raft/bad.py:2: import socket")
    assert problems[1].startswith("catga_sync/raft/bad.py:3: import requests")


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from os import path",
        "import threading as t",
        "from concurrent.futures import ThreadPoolExecutor",
        "import sqlite3",
        "from datetime import datetime",
        "import io",
        "import asyncio",
        "from http import client",
        "import urllib.request",
        "import sqlalchemy",
        "from flask import Flask",
        "from catga_sync import node",
        "from catga_sync.storage import SqlStorage",
        "from ..storage import SqlStorage",
        "from .. import node",
        "from ... import something",
    ],
)
def test_checker_rejects_forbidden_import(source: str) -> None:
    assert check_source(source, "x.py", RAFT_PACKAGE), source


@pytest.mark.parametrize(
    "source",
    [
        "import json\nimport hashlib\nimport enum",
        "from collections.abc import Sequence",
        "from . import codec",
        "from .messages import Entry",
        "from ..errors import InvalidMessageError",
        "from .. import errors",
        "from catga_sync import errors",
        "from catga_sync.errors import ConfigError",
        "import catga_sync.raft.log",
        "from catga_sync.raft import core",
        "import random\nrng: random.Random = random.Random(7)\nrng.randrange(10)",
        "from random import Random",
    ],
)
def test_checker_accepts_pure_import(source: str) -> None:
    assert check_source(source, "x.py", RAFT_PACKAGE) == []


@pytest.mark.parametrize(
    "call",
    [
        "random()",
        "randint(1, 6)",
        "choice([1])",
        "randrange(5)",
        "shuffle(xs)",
        "uniform(0, 1)",
        "seed(1)",
        "sample(xs, 1)",
        "getrandbits(8)",
    ],
)
def test_checker_rejects_global_random_calls(call: str) -> None:
    source = f"import random\nxs = [1]\nvalue = random.{call}\n"
    problems = check_source(source, "x.py", RAFT_PACKAGE)
    assert [p.split(":")[1] for p in problems] == ["3"]


def test_checker_follows_random_alias_and_from_import() -> None:
    source = "import random as r\nr.randint(1, 2)\nfrom random import shuffle\n"
    problems = check_source(source, "x.py", RAFT_PACKAGE)
    assert len(problems) == 2
    assert "r.randint" in problems[0]
    assert "shuffle" in problems[1]


def test_checker_allows_methods_of_an_injected_generator() -> None:
    source = (
        "import random\n"
        "def timeout(rng: random.Random) -> int:\n"
        "    return 10 + rng.randrange(10) + rng.randint(0, 1)\n"
    )
    assert check_source(source, "x.py", RAFT_PACKAGE) == []


def test_checker_rejects_builtin_io_calls() -> None:
    source = "with open('f') as fh:\n    print(fh.read())\n"
    problems = check_source(source, "x.py", RAFT_PACKAGE)
    assert len(problems) == 2


def test_checker_resolves_relative_imports_against_the_package() -> None:
    assert _resolve("errors", 2, "catga_sync.raft") == "catga_sync.errors"
    assert _resolve("messages", 1, "catga_sync.raft") == "catga_sync.raft.messages"
    assert _resolve(None, 1, "catga_sync.raft") == "catga_sync.raft"
    assert _resolve(None, 2, "catga_sync.raft") == "catga_sync"
    assert _package_of(RAFT_DIR / "core.py", REPO_ROOT) == "catga_sync.raft"
    assert _package_of(RAFT_DIR / "__init__.py", REPO_ROOT) == "catga_sync.raft"


def test_checker_walks_subpackages_and_reports_relative_path(tmp_path: Path) -> None:
    package_dir = tmp_path / "catga_sync" / "raft"
    (package_dir / "sub").mkdir(parents=True)
    (package_dir / "__init__.py").write_text("from .sub import x\n")
    (package_dir / "sub" / "__init__.py").write_text("")
    (package_dir / "sub" / "x.py").write_text("from ...errors import E\nfrom ... import node\n")
    (package_dir / "clock.py").write_text('"""doc"""\n\nimport time\n')
    problems = check_tree(tmp_path, package_dir)
    assert problems == [
        "catga_sync/raft/clock.py:3: import time: "
        "forbidden stdlib module (I/O, time or global randomness)",
        "catga_sync/raft/sub/x.py:2: from catga_sync import node (catga_sync.node): "
        "not stdlib, catga_sync.raft or catga_sync.errors",
    ]


# --------------------------------------------------------------------------------------------
# The layers: no import cycle in catga_sync, and the engine knows no feature
#
# Every import counts: at module level, inside functions and under ``if TYPE_CHECKING:`` (a
# cycle through annotations is still a cycle a newcomer must untangle).

PACKAGE_DIR = REPO_ROOT / "catga_sync"
RUNTIME = "catga_sync.runtime"
RUNTIME_MAY_IMPORT = (
    "catga_sync.runtime",
    "catga_sync.raft",
    "catga_sync.fsm",
    "catga_sync.config",
    "catga_sync.config_values",  # parsing of durations and endpoints, beside config
    "catga_sync.errors",
    "catga_sync.storage",
    "catga_sync.transport",
)
"""What the engine may import of catga_sync (DESIGN: runtime/ imports no feature, no web/)."""
MAX_LINES = 800
"""No module outside raft/ over this many lines."""
MAX_RUNTIME_LINES = 500
"""No module of the engine over this many lines: each file one job, read top to bottom."""


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package_dir: Path) -> dict[str, dict[str, int]]:
    """Module -> {imported first-party module: line of the first such import}, for every module
    under ``package_dir``; ``from pkg import name`` counts as importing ``pkg.name`` when that
    is a module, else ``pkg``."""
    modules = {_module_name(p, root): p for p in sorted(package_dir.rglob("*.py"))}
    top = package_dir.name
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = _package_of(path, root)
        edges: dict[str, int] = {}

        def add(target: str, line: int, edges: dict[str, int] = edges, name: str = name) -> None:
            if not target.startswith(top + ".") and target != top:
                return
            # Importing a.b.c runs the packages a.b on the way (not the root: it imports
            # nothing but the errors at run time, and its lazy names are not edges).
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                step = ".".join(parts[:k])
                if step != name and step in modules and not name.startswith(step + "."):
                    edges.setdefault(step, line)
            if target == top and target != name:
                edges.setdefault(target, line)

        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module, node.level, package)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    add(candidate if candidate in modules else base, node.lineno)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import cycles of ``graph``: each strongly connected component of more than one
    module (Tarjan's algorithm), as a sorted list of module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def runtime_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Imports of the engine (``catga_sync.runtime``) beyond what it may import."""
    found = []
    for module, edges in sorted(graph.items()):
        if module != RUNTIME and not module.startswith(RUNTIME + "."):
            continue
        for target, line in sorted(edges.items()):
            if not any(target == m or target.startswith(m + ".") for m in RUNTIME_MAY_IMPORT):
                found.append(f"{module}:{line} imports {target}")
    return found


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(cycle)
    edges = [f"  {m}:{line} -> {t}" for m in cycle for t, line in graph[m].items() if t in members]
    return "cycle among " + ", ".join(cycle) + ":\n" + "\n".join(edges)


def test_catga_sync_has_no_import_cycle() -> None:
    graph = import_graph(REPO_ROOT, PACKAGE_DIR)
    assert len(graph) > 40  # the walk found the package
    cycles = import_cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


def test_the_engine_imports_no_feature_and_nothing_of_web() -> None:
    graph = import_graph(REPO_ROOT, PACKAGE_DIR)
    assert {m for m in graph if m.startswith(RUNTIME + ".")} >= {
        "catga_sync.runtime.node",
        "catga_sync.runtime.loop",
    }
    problems = runtime_violations(graph)
    assert not problems, "catga_sync/runtime must not import features:\n" + "\n".join(problems)


def test_no_module_outside_the_core_is_over_800_lines_and_none_of_the_engine_over_500() -> None:
    long = [
        f"{p.relative_to(REPO_ROOT)}: {n} lines"
        for p in sorted(PACKAGE_DIR.rglob("*.py"))
        if RAFT_DIR not in p.parents
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not long, "split these modules by job:\n" + "\n".join(long)
    runtime = [
        f"{p.relative_to(REPO_ROOT)}: {n} lines"
        for p in sorted((PACKAGE_DIR / "runtime").glob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_RUNTIME_LINES
    ]
    assert not runtime, "split these modules of the engine by job:\n" + "\n".join(runtime)


def test_the_layer_checker_finds_a_cycle_through_type_checking_and_a_function(
    tmp_path: Path,
) -> None:
    pkg = tmp_path / "catga_sync"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime" / "__init__.py").write_text("")
    (pkg / "runtime" / "node.py").write_text("def f():\n    from ..jobs import x\n")
    (pkg / "jobs.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runtime import node\n"
    )
    (pkg / "errors.py").write_text("import json\n")
    graph = import_graph(tmp_path, pkg)
    assert graph["catga_sync.runtime.node"] == {"catga_sync.jobs": 2}
    assert graph["catga_sync.jobs"] == {"catga_sync.runtime": 3, "catga_sync.runtime.node": 3}
    assert import_cycles(graph) == [["catga_sync.jobs", "catga_sync.runtime.node"]]
    assert runtime_violations(graph) == ["catga_sync.runtime.node:2 imports catga_sync.jobs"]
    (pkg / "runtime" / "node.py").write_text("from ..errors import E\n")
    graph = import_graph(tmp_path, pkg)
    assert import_cycles(graph) == []
    assert runtime_violations(graph) == []
