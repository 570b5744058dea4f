"""Waiting without sleeping for logic: poll a condition until a bounded deadline, and find free
loopback ports. Shared by the unit tests and the end-to-end harness (``e2e/harness.py``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (bound, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` returns something truthy and return it; fail after ``timeout``.

    ``OSError`` and ``ValueError`` from the predicate (a process not answering yet, a body not
    yet JSON) count as "not yet"; the last one is named in the failure."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )
