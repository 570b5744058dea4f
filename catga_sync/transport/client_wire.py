"""The client routes' wire: what a :class:`~catga_sync.client.ClusterClient` and a node agree
on, under ``{url_prefix}/client`` (``/_catga/client`` by default).

==============================  ===============================================================
``GET  /client/status``         this node's view: role, term, leader, indexes, ``version``
``GET  /client/leadership``     ``?after=V&wait=S``: the status once its ``version`` passes
                                ``V``, or after ``S`` seconds (a long poll, at most 30)
``POST /client/commands``       ``{"command": base64 of a command entry, "timeout"}``
``POST /client/queries``        ``{"machine", "query", "args", "kwargs", "timeout"}``
``POST /client/locks/acquire``  ``{"name", "ttl", "wait", "owner", "holder"}``
``POST /client/locks/renew``    ``{"name", "token"}``
``POST /client/locks/release``  ``{"name", "token", "request_id"}``
``POST /client/locks/cancel``   ``{"name", "holder"}``: an acquire given up on (leave the
                                queue, or give back a grant that came too late)
==============================  ===============================================================

A command entry is :func:`catga_sync.fsm.encode_command`'s bytes: its (client, seq) makes a
retry, through any node, apply once. Requests carry ``Authorization: Bearer <ClientToken>``
when the nodes have one. Errors are JSON ``{"error", "message"}``: ``401 unauthorized``, ``400``
for a bad body or parameter, ``409 lock_not_acquired`` / ``lock_not_held``, and ``503`` with
``Retry-After`` when the cluster cannot answer now (``no_leader``, ``not_leader`` with
``leader``, ``commit_timeout`` with ``request_id``, ``unavailable``): try again, here or on
another node.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_PATH",
    "COMMANDS_PATH",
    "HEADER_LEADER",
    "LEADERSHIP_PATH",
    "LOCK_ACQUIRE_PATH",
    "LOCK_CANCEL_PATH",
    "LOCK_RELEASE_PATH",
    "LOCK_RENEW_PATH",
    "MAX_LONG_POLL",
    "MAX_TIMEOUT",
    "QUERIES_PATH",
    "RETRYABLE_ERRORS",
    "STATUS_PATH",
]

CLIENT_PATH = "/client"
STATUS_PATH = f"{CLIENT_PATH}/status"
LEADERSHIP_PATH = f"{CLIENT_PATH}/leadership"
COMMANDS_PATH = f"{CLIENT_PATH}/commands"
QUERIES_PATH = f"{CLIENT_PATH}/queries"
LOCK_ACQUIRE_PATH = f"{CLIENT_PATH}/locks/acquire"
LOCK_RENEW_PATH = f"{CLIENT_PATH}/locks/renew"
LOCK_RELEASE_PATH = f"{CLIENT_PATH}/locks/release"
LOCK_CANCEL_PATH = f"{CLIENT_PATH}/locks/cancel"

HEADER_LEADER = "X-Catga-Leader"
"""On every answer of a client route: the leader's endpoint as the node knows it (absent when
it knows none), so a client sends its next request there and saves a hop."""

MAX_LONG_POLL = 30.0
"""The longest ``wait`` of a leadership long poll, in seconds."""
MAX_TIMEOUT = 600.0
"""The longest ``timeout`` a command or query may ask for."""
RETRYABLE_ERRORS = frozenset({"no_leader", "not_leader", "commit_timeout", "unavailable"})
"""The 503 errors a client retries (on another node when it knows none better)."""
