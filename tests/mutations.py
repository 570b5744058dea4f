"""Mutations of the node that the test suite must kill, and a runner that proves it does.

Each mutation below breaks one promise of the node (its Raft loop's ordering, its errors, its
snapshot restore, its reads, a lease's clock) by an exact string replacement in one file. The
runner copies the tree to a scratch directory, applies one mutation there, and runs the tests
named for it against the copy (``PYTHONPATH`` points at the copy, and the runner checks that
the copy is what ``import catga_sync`` finds). A mutation is *killed* when those tests fail,
*survived* when they pass. The unmutated copy is run first: the killing tests must pass there,
or nothing the runner says means anything.

    python tests/mutations.py              # every mutation
    python tests/mutations.py 3 6          # mutations 3 and 6
    python tests/mutations.py --list

When the code moves, re-target the ``path``/``old``/``new`` of the table (done once, when
``catga_sync/node.py`` became ``catga_sync/runtime/``); a replacement that no longer matches
exactly once is reported as an error, never skipped. See ``tests/helpers/MUTATIONS.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = "tests/test_node_contract.py"
FAULTS = "tests/faults/test_partitions.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


# fmt: off
MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "messages sent before the persist (votes and acks leave before the disk has them)",
        "catga_sync/runtime/loop.py",
        "            self._persister.persist(ready)  # 1. persist (a commit index alone: later)\n"
        "            stats.entries_persisted += len(ready.entries)\n"
        "            stats.bytes_persisted += sum(len(e.data) for e in ready.entries)\n"
        "            if ready.messages:  # 2. send\n"
        "                outbox.send(ready.messages)\n",
        "            if ready.messages:  # 2. send (MUTATED: before the persist)\n"
        "                outbox.send(ready.messages)\n"
        "            self._persister.persist(ready)  # 1. persist\n"
        "            stats.entries_persisted += len(ready.entries)\n"
        "            stats.bytes_persisted += sum(len(e.data) for e in ready.entries)\n",
        (f"{CONTRACT}::test_no_vote_or_acknowledgement_leaves_before_the_disk_has_it",),
    ),
    Mutation(
        "hard-state-only changes (a new term, a vote) not written",
        "catga_sync/runtime/persister.py",
        "        if not ready.entries and ready.snapshot is None:\n"
        "            if changed is None:\n"
        "                return\n",
        "        if not ready.entries and ready.snapshot is None:\n"
        "            return  # MUTATED: a term or vote alone is never written\n",
        (f"{CONTRACT}::test_no_vote_or_acknowledgement_leaves_before_the_disk_has_it",),
    ),
    Mutation(
        "every write without an fsync (terms, votes and entries too)",
        "catga_sync/runtime/persister.py",
        "        self._write(changed, ready, sync=True)\n",
        "        self._write(changed, ready, sync=False)  # MUTATED: nothing is fsynced\n",
        (f"{CONTRACT}::test_no_vote_or_acknowledgement_leaves_before_the_disk_has_it",),
    ),
    Mutation(
        "no ProposalDroppedError for a proposal overwritten by a new leader",
        "catga_sync/runtime/loop.py",
        "            if waiter.term != entry.term:\n",
        "            if False:  # MUTATED: waiter.term != entry.term\n",
        (f"{CONTRACT}::test_a_proposal_overwritten_by_a_new_leader_fails_as_dropped",),
    ),
    Mutation(
        "a snapshot sent by the leader is not restored",
        "catga_sync/runtime/loop.py",
        "        if ready.apply_snapshot and ready.snapshot is not None:\n"
        "            self._restore(ready.snapshot.data)\n",
        "        if ready.apply_snapshot and ready.snapshot is not None:\n"
        "            pass  # MUTATED: the snapshot is ignored\n",
        (f"{CONTRACT}::test_a_follower_overtaken_past_the_leaders_snapshot_restores_it",),
    ),
    Mutation(
        "an exception from persist() swallowed (the loop goes on)",
        "catga_sync/runtime/persister.py",
        "                self._storage.persist(**write)\n",
        "                try:  # MUTATED: a failed persist is logged and forgotten\n"
        "                    self._storage.persist(**write)\n"
        "                except Exception:\n"
        "                    log.exception('persist failed')\n",
        (f"{CONTRACT}::test_a_persist_that_raises_stops_the_node_and_fails_its_callers",),
    ),
    Mutation(
        "a read released before the node applied up to its read index",
        "catga_sync/runtime/loop.py",
        "            if 0 <= waiter.index <= applied:\n",
        "            if 0 <= waiter.index:  # MUTATED: not compared with applied\n",
        (f"{CONTRACT}::test_a_read_barrier_waits_until_the_node_has_applied_its_read_index",),
    ),
    Mutation(
        "Lease.is_valid() without its own TTL clock check",
        "catga_sync/locks/lease.py",
        "            and self._holding.granted()\n"
        "            and self._clock() < self._valid_until\n"
        "        )\n",
        "            and self._holding.granted()\n"
        "        )  # MUTATED: the TTL clock check removed\n",
        (f"{CONTRACT}::test_a_lease_is_invalid_past_its_ttl_even_while_its_keeper_sleeps",),
    ),
    # The fault harness (root, ip, nft): real processes, real partitions, the checkers.
    Mutation(
        "the example's GET /orders/<id> served from the node's own state (no read barrier)",
        "example_flask/__init__.py",
        "    order = orders().get(order_id)\n",
        "    order = orders().local.get(order_id)  # MUTATED: a local, possibly stale read\n",
        (f"{FAULTS}::test_three_nodes_under_one_kind_of_fault[isolate_leader]",),
    ),
    Mutation(
        "check-quorum removed: a leader cut off from every follower goes on leading",
        "catga_sync/raft/core.py",
        "            if self.config.check_quorum and not self._quorum_recently_active():\n",
        "            if False:  # MUTATED: check-quorum removed\n",
        (f"{FAULTS}::test_an_isolated_leader_steps_down_and_its_leader_work_stops",),
    ),
    # The persister (runtime/persister.py), added with the deferred commit-index write.
    Mutation(
        "a new term or vote deferred like a commit index (written unsynced, after the messages)",
        "catga_sync/runtime/persister.py",
        "            if (changed.term, changed.vote) == (written.term, written.vote):\n",
        "            if True:  # MUTATED: any hard state alone waits for the end of the batch\n",
        (f"{CONTRACT}::test_no_vote_or_acknowledgement_leaves_before_the_disk_has_it",),
    ),
)
# fmt: on

IGNORED = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", "*.egg-info", ".tox", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", "_build", "venv*", ".venv", ".ci",
)  # fmt: skip


def scratch_copy(into: Path) -> Path:
    tree = into / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORED)
    return tree


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_import(tree: Path) -> None:
    """Make sure ``import catga_sync`` finds the copy, not the checkout or an installed one."""
    found = subprocess.run(
        [sys.executable, "-c", "import catga_sync; print(catga_sync.__file__)"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the scratch copy is not what is imported: {found}")


def apply(tree: Path, mutation: Mutation) -> None:
    path = tree / mutation.path
    text = path.read_text(encoding="utf-8")
    count = text.count(mutation.old)
    if count != 1:
        raise LookupError(
            f"{mutation.path}: the text to replace occurs {count} times (re-target the table)"
        )
    path.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, list[str]]:
    """Run ``tests`` in ``tree``: pytest's exit code (-1: timed out), its last line, and the
    first lines of its failure report (``E ...``) that say why."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests]
    try:
        done = subprocess.run(
            command,
            cwd=tree,
            env=environment(tree),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout}s", []
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    why = [line.strip() for line in lines if line.startswith("E ")][:3]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-300:], why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", type=int, help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = args.numbers or list(range(1, len(MUTATIONS) + 1))
    if args.list:
        for n, m in enumerate(MUTATIONS, 1):
            print(f"{n}. {m.name} ({m.path})\n   killed by: {', '.join(m.tests)}")
        return 0
    results: list[tuple[int, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="catga-mutations-") as tmp:
        pristine = scratch_copy(Path(tmp) / "pristine")
        check_import(pristine)
        every_test = tuple(dict.fromkeys(t for n in chosen for t in MUTATIONS[n - 1].tests))
        code, summary, why = run_tests(pristine, every_test, args.timeout)
        print(f"unmutated copy: {summary}", flush=True)
        if code != 0:
            print("the killing tests fail without any mutation: fix them first", *why, sep="\n")
            return 2
        for n in chosen:
            mutation = MUTATIONS[n - 1]
            tree = scratch_copy(Path(tmp) / f"mutant-{n}")
            check_import(tree)
            started = time.monotonic()
            try:
                apply(tree, mutation)
            except LookupError as exc:
                verdict, summary, why = "ERROR", str(exc), []
            else:
                code, summary, why = run_tests(tree, mutation.tests, args.timeout)
                verdict = "survived" if code == 0 else "killed" if code in (1, -1) else "ERROR"
            elapsed = time.monotonic() - started
            results.append((n, verdict, mutation.name))
            print(f"{n}. {verdict:8} {mutation.name}  [{summary}] ({elapsed:.0f}s)")
            for line in why:
                print(f"       {line[:160]}")
            sys.stdout.flush()
            shutil.rmtree(tree)
    killed = sum(1 for _, verdict, _ in results if verdict == "killed")
    print(f"{killed} of {len(results)} mutations killed")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
