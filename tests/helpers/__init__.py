"""Helpers shared by the tests (unit and end to end): waiting with deadlines, and driving a
core by hand.

The tests import them as ``helpers`` (pytest puts ``tests/`` on the import path); nothing in
``catga_sync`` imports them.
"""

from __future__ import annotations

from .wait import free_ports, poll

__all__ = ["free_ports", "poll"]
