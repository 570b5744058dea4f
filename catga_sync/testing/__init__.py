"""A deterministic, in-process Raft cluster for tests: yours and ours.

:class:`~catga_sync.testing.simulator.SimulatedCluster` runs N
:class:`~catga_sync.raft.RaftCore` instances in one thread over a simulated network with
per-link delay, loss, duplication and reordering, partitions (isolate, split, one-way, bridge),
and crashes that lose whatever a node had not persisted. Everything random flows from one seed,
so a failing schedule replays exactly.

After every event the simulator checks Raft's safety properties (Figure 3 of the paper) and
raises :class:`~catga_sync.testing.invariants.InvariantViolation` naming the seed:

- *election safety*: at most one leader per term;
- *log matching*: entries with the same index and term have identical prefixes;
- *leader completeness*: a leader holds every entry committed in earlier terms;
- *state machine safety*: every node applies the same entry at a given index;
- term, vote and commit never go backwards on a node, across restarts too;
- nothing is acknowledged (vote granted, entries or snapshot accepted) before it is persisted.

Test your own state machine by passing ``state_machine=YourClass``: anything with
``apply(index, data)``, ``snapshot() -> bytes`` and ``restore(data)``. Run
``python -m catga_sync.testing demo`` for a guided tour, ``… fuzz --seeds 1000`` for a soak and
``… replay SEED`` to print the schedule of one seed.

The package, read in this order: ``nodes`` (one simulated node: its core, disk and state
machine), ``invariants`` (the safety checks), ``simulator`` (the cluster, its network and
clock), ``randomized`` (the mixed-fault run) and ``cli`` (``python -m catga_sync.testing``).
Every name is importable from ``catga_sync.testing`` itself, as when this was one module.
"""

from __future__ import annotations

# ``name as name`` re-exports what the single module had beyond __all__ (tests and old imports
# use them), without widening the public list.
from .cli import _demo as _demo
from .cli import main as main
from .invariants import InvariantViolation
from .nodes import ListStateMachine, SimStateMachine
from .nodes import _Disk as _Disk
from .nodes import _Node as _Node
from .randomized import RunReport as RunReport
from .randomized import _converged as _converged
from .randomized import run_random
from .simulator import LinkFaults, SimulatedCluster

__all__ = [
    "InvariantViolation",
    "LinkFaults",
    "ListStateMachine",
    "SimStateMachine",
    "SimulatedCluster",
    "run_random",
]
