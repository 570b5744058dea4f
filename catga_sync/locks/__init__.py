"""Distributed locks with fencing tokens, replicated through the Raft log.

::

    with cluster.lock("nightly-report", ttl=30) as lease:
        write_report(fence=lease.token)

A lock is a row of :class:`~catga_sync.locks.table.LockTable`, a replicated state machine every
node registers. Acquire it from any node (a follower forwards the command to the leader); the
grant carries a **fencing token**, the log index of the entry that granted it, so tokens only
ever increase. The lease lasts ``ttl`` seconds on the leader's monotonic clock and is renewed
automatically while its holder lives; a holder that dies, or pauses past its TTL, loses the
lock to the next waiter (first come, first served). A paused holder cannot know it was paused,
so pass the token to whatever the lock protects and let it refuse older tokens
(:mod:`catga_sync.fencing`).

Three parts, one module each, read in this order:

- ``table``: :class:`~catga_sync.locks.table.LockTable`, the replicated state: pure and
  deterministic like every state machine. It reads no clock; the token is
  :attr:`~catga_sync.fsm.StateMachine.entry_index`.
- ``monitor``: :class:`~catga_sync.locks.monitor.LeaseMonitor`, one per node, outside the
  replicated state. As this node applies grants and renewals it notes each lease's deadline on
  this node's monotonic clock (apply time + TTL); the leader proposes ``expire`` once a
  deadline passes. A node that becomes leader restarts every deadline at its election
  (now + TTL), so a failover never cuts a lease short. It also wakes this node's waiters and
  tells its holders when a lease is gone.
- ``lease``: :class:`~catga_sync.locks.lease.Lease`, the holder's handle: the token,
  :meth:`~catga_sync.locks.lease.Lease.is_valid`, renewal, release; and
  :func:`~catga_sync.locks.lease.acquire` and its shapes (``try_acquire``, ``lock``,
  ``DistributedLock``).

Why two holders are never valid at once: a holder counts its lease from the moment it *sent*
the request that the cluster applied last for it (the acquire, or the latest renewal), and
gives it ``ttl × (1 - CLOCK_DRIFT)``. Every node counts the same lease from when it *applied*
that entry, or from its own election, both later; and ``expire(name, token, since)`` frees a
lock only if no renewal (``since``, the index of the last grant or renewal) was applied since
the leader decided. So the next grant comes after the first holder's
:meth:`~catga_sync.locks.lease.Lease.is_valid` turned false, provided the machines' clocks run
at the same rate within ``CLOCK_DRIFT``.

Every name is importable from ``catga_sync.locks`` itself, as when this was one module.
"""

from __future__ import annotations

# ``name as name`` re-exports each name the single module had (the public ones, and the private
# ones tests and the node use), so every old import keeps working.
from .lease import CLOCK_DRIFT as CLOCK_DRIFT
from .lease import DEFAULT_TTL as DEFAULT_TTL
from .lease import DistributedLock as DistributedLock
from .lease import Holding as Holding
from .lease import Lease as Lease
from .lease import LocalHolding as LocalHolding
from .lease import _call as _call
from .lease import _default_owner as _default_owner
from .lease import _give_up as _give_up
from .lease import _node_of as _node_of
from .lease import acquire as acquire
from .lease import lock as lock
from .lease import try_acquire as try_acquire
from .lease import wait_for_grant as wait_for_grant
from .monitor import RETRY_DELAY as RETRY_DELAY
from .monitor import WAIT_GRACE as WAIT_GRACE
from .monitor import Expiry as Expiry
from .monitor import LeaseMonitor as LeaseMonitor
from .monitor import _Deadline as _Deadline
from .monitor import _monitor_of as _monitor_of
from .monitor import _Watch as _Watch
from .monitor import install_lock_table as install_lock_table
from .monitor import log as log
from .table import MAX_HOLDER as MAX_HOLDER
from .table import MAX_NAME as MAX_NAME
from .table import MAX_OWNER as MAX_OWNER
from .table import MAX_TTL as MAX_TTL
from .table import MAX_WAIT as MAX_WAIT
from .table import MAX_WAITERS as MAX_WAITERS
from .table import MIN_TTL as MIN_TTL
from .table import LockListener as LockListener
from .table import LockTable as LockTable
from .table import _describe as _describe
from .table import _granted as _granted
from .table import _is_number as _is_number
from .table import check_holder as check_holder
from .table import check_name as check_name
from .table import check_owner as check_owner
from .table import check_token as check_token
from .table import check_ttl as check_ttl
from .table import check_wait as check_wait
