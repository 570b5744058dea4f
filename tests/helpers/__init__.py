"""Helpers shared by the tests (unit and end to end): waiting with deadlines, driving a core by
hand, the Ready-contract checking pair, faults, and the in-process :class:`LocalCluster`.

The tests import them as ``helpers`` (pytest puts ``tests/`` on the import path); nothing in
``catga_sync`` imports them.
"""

from __future__ import annotations

from .checking import CheckingStorage, CheckingTransport, ContractChecker, DurableImage
from .cluster import WAIT, LocalCluster
from .core import drain, drain_reads, elect, tick_until
from .faults import FailingStorage, FaultyNetwork, MessageWatch
from .wait import free_ports, poll

__all__ = [
    "WAIT",
    "CheckingStorage",
    "CheckingTransport",
    "ContractChecker",
    "DurableImage",
    "FailingStorage",
    "FaultyNetwork",
    "LocalCluster",
    "MessageWatch",
    "drain",
    "drain_reads",
    "elect",
    "free_ports",
    "poll",
    "tick_until",
]
