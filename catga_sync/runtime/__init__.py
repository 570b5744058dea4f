"""The engine: a Raft node's threads, its Ready loop and lifecycle, and how features plug in.

It knows no feature and nothing of Flask: it imports only :mod:`catga_sync.raft`,
:mod:`catga_sync.fsm`, :mod:`catga_sync.config`, :mod:`catga_sync.errors`,
:mod:`catga_sync.storage` and :mod:`catga_sync.transport` (``tests/test_purity.py`` keeps it so).

- :mod:`.node`: :class:`RaftNode`, the lifecycle; :mod:`.calls`, what other threads ask of it;
- :mod:`.loop`: the Raft loop, persist → send → apply → advance;
- :mod:`.outbox`: inline replies and held-back commit notices;
- :mod:`.status`: :class:`NodeStatus`, :class:`NodeStats`, counters;
- :mod:`.extension`: :class:`Extension` and :class:`NodeHandle`;
- :mod:`.leadership`: :class:`LeadershipWatch`, leadership changes for features;
- :mod:`.state`: state machine handles; :mod:`.timers`: the pacemaker; :mod:`.fork`.
"""

from __future__ import annotations

from .extension import Extension, NodeHandle
from .leadership import LeadershipChange, LeadershipWatch
from .node import RaftNode
from .state import ClientSession, StateHandle
from .status import NodeStats, NodeStatus, counter, counters_of

__all__ = [
    "ClientSession",
    "Extension",
    "LeadershipChange",
    "LeadershipWatch",
    "NodeHandle",
    "NodeStats",
    "NodeStatus",
    "RaftNode",
    "StateHandle",
    "counter",
    "counters_of",
]
