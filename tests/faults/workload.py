"""Clients of the example app that record what they did, for the checkers.

Each client is a thread with one request in flight, sending to a node picked at random (a
follower forwards or refuses). Every operation is stamped with ``time.monotonic()`` before it
is sent and when its answer arrives; an answer that never comes (a timeout, a reset) makes
the operation *indeterminate*: it may have taken effect or not, and the checkers allow both.

What a status code means for the history (the example's error bodies, see example_flask):
- a write's 5xx, a timeout or a reset: indeterminate. Even ``no_leader`` is, because the
  node's own retries may have sent an earlier attempt to a leader before the last one failed;
- a 409 ``version_conflict``: a failed compare-and-set that read ``current_version``;
- a read's failure: nothing happened, so it is left out.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests

from .history import Grant, Op

LOCK = "fault-lock"
LOCK_TTL = 1.5
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 4.0
"""Longer than a write's commit timeout on the node, so that the node's own answer (a 503
that names the problem) usually comes back before the client gives up."""


class Recorder:
    """The shared history: ops, lock grants and error counts, appended under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ops: list[Op] = []
        self.grants: list[Grant] = []
        self.created: list[str] = []
        self.errors: collections.Counter[str] = collections.Counter()

    def op(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)
            if op.f == "create" and op.complete is not None:
                self.created.append(op.key)

    def grant(self, grant: Grant) -> None:
        with self._lock:
            self.grants.append(grant)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1


def _kind(response: requests.Response) -> str:
    try:
        code = response.json().get("error", "")
    except ValueError:
        code = ""
    return f"{response.status_code} {code}".strip()


class Workload:
    """Compare-and-set clients on a few orders, a creator of new orders and lock clients,
    all running until :meth:`stop`."""

    def __init__(
        self,
        urls: Callable[[], Sequence[str]],
        seed: int,
        *,
        keys: int = 3,
        cas_clients: int = 4,
        lock_clients: int = 2,
    ) -> None:
        self.urls = urls
        self.rng = random.Random(seed)
        self.history = Recorder()
        self.keys: list[str] = []
        self._key_count = keys
        self._cas_clients = cas_clients
        self._lock_clients = lock_clients
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life cycle ---------------------------------------------------------------------------

    def setup(self, timeout: float = 20.0) -> None:
        """Create the orders the compare-and-set clients work on (before any fault)."""
        session = requests.Session()
        deadline = time.monotonic() + timeout
        while len(self.keys) < self._key_count:
            errors = self.history.errors
            assert time.monotonic() < deadline, f"could not create the orders: {errors}"
            key = self._create(session, 0, self.rng.choice(self.urls()))
            if key is not None:
                self.keys.append(key)

    def start(self) -> None:
        workers: list[Callable[[int], None]] = [self._cas_client] * self._cas_clients
        workers += [self._creator]
        workers += [self._lock_client] * self._lock_clients
        for process, worker in enumerate(workers, start=1):
            thread = threading.Thread(target=worker, args=(process,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(READ_TIMEOUT + CONNECT_TIMEOUT + 5)
            assert not thread.is_alive(), "a workload client did not stop"

    # -- clients ------------------------------------------------------------------------------

    def _cas_client(self, process: int) -> None:
        rng = random.Random(self.rng.random())
        session = requests.Session()
        known: dict[str, int] = {}
        writes = 0
        while not self._stop.is_set():
            url, key = rng.choice(self.urls()), rng.choice(self.keys)
            if rng.random() < 0.5:
                version = self._read(session, process, url, key)
            else:
                writes += 1
                status = f"p{process}-{writes}"
                version = self._cas(session, process, url, key, known.get(key, 1), status)
            if version is not None:
                known[key] = version
            else:
                time.sleep(0.05)  # a refusal comes back at once: do not spin on it

    def _creator(self, process: int) -> None:
        rng = random.Random(self.rng.random())
        session = requests.Session()
        while not self._stop.wait(0.2):
            self._create(session, process, rng.choice(self.urls()))

    def _lock_client(self, process: int) -> None:
        rng = random.Random(self.rng.random())
        session = requests.Session()
        while not self._stop.is_set():
            url = rng.choice(self.urls())
            body = {"ttl": LOCK_TTL, "wait": 0.5, "owner": f"client{process}"}
            invoke = time.monotonic()
            response = self._send(session, "POST", f"{url}/locks/{LOCK}", body)
            complete = time.monotonic()
            if response is None or response.status_code != 200:
                if response is not None and response.status_code != 409:
                    self.history.error(_kind(response))
                time.sleep(0.05)
                continue
            token = response.json()["token"]
            time.sleep(rng.uniform(0, 0.3))
            release_invoke = time.monotonic()
            self.history.grant(
                Grant(LOCK, f"client{process}", token, LOCK_TTL, invoke, complete, release_invoke)
            )
            released = self._send(session, "DELETE", f"{url}/locks/{LOCK}", {"token": token})
            if released is not None and released.status_code != 200:
                self.history.error(f"release {_kind(released)}")

    # -- one operation each -------------------------------------------------------------------

    def _send(
        self, session: requests.Session, method: str, url: str, body: Any = None
    ) -> requests.Response | None:
        try:
            return session.request(method, url, json=body, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.RequestException as exc:
            self.history.error(type(exc).__name__)
            return None

    def _create(self, session: requests.Session, process: int, url: str) -> str | None:
        invoke = time.monotonic()
        response = self._send(session, "POST", f"{url}/orders", {"customer": "c", "amount": 1})
        complete = time.monotonic()
        if response is None or response.status_code != 201:
            if response is not None:
                self.history.error(_kind(response))
            return None  # an unknown create is of no order we know: nothing to record
        key = str(response.json()["id"])
        output = {"version": 1, "status": "created"}
        self.history.op(Op(process, "create", key, None, output, invoke, complete))
        return key

    def _read(self, session: requests.Session, process: int, url: str, key: str) -> int | None:
        invoke = time.monotonic()
        response = self._send(session, "GET", f"{url}/orders/{key}")
        complete = time.monotonic()
        if response is None:
            return None
        if response.status_code == 200:
            order = response.json()
            output = {"found": True, "version": order["version"], "status": order["status"]}
            self.history.op(Op(process, "read", key, None, output, invoke, complete))
            return int(order["version"])
        if response.status_code == 404 and _kind(response) == "404 not_found":
            self.history.op(Op(process, "read", key, None, {"found": False}, invoke, complete))
            return None
        self.history.error(_kind(response))
        return None

    def _cas(
        self,
        session: requests.Session,
        process: int,
        url: str,
        key: str,
        expected: int,
        status: str,
    ) -> int | None:
        value = {"expected_version": expected, "status": status}
        invoke = time.monotonic()
        response = self._send(session, "PATCH", f"{url}/orders/{key}", value)
        complete = time.monotonic()
        output: dict[str, Any] | None
        if response is None:
            output, done, version = None, None, None
        elif response.status_code == 200:
            order = response.json()
            output = {"ok": True, "version": order["version"], "status": order["status"]}
            done, version = complete, int(order["version"])
        elif response.status_code == 409 and _kind(response) == "409 version_conflict":
            version = int(response.json()["current_version"])
            output, done = {"ok": False, "current_version": version}, complete
        elif response.status_code == 404:
            output, done, version = {"ok": False, "not_found": True}, complete, None
        else:
            self.history.error(_kind(response))
            output, done, version = None, None, None
        self.history.op(Op(process, "cas", key, value, output, invoke, done))
        return version

    def final_reads(self, url: str, timeout: float = 20.0) -> dict[str, dict[str, Any] | None]:
        """Every acknowledged order read once more, through ``url`` (after heal), recorded in
        the history too: a lost write shows as a read the checkers cannot place."""
        session = requests.Session()
        out: dict[str, dict[str, Any] | None] = {}
        for key in sorted(set(self.history.created) | set(self.keys), key=int):
            deadline = time.monotonic() + timeout
            while True:
                invoke = time.monotonic()
                response = self._send(session, "GET", f"{url}/orders/{key}")
                complete = time.monotonic()
                if response is not None and response.status_code in (200, 404):
                    break
                assert time.monotonic() < deadline, f"final read of order {key} kept failing"
                time.sleep(0.1)
            if response.status_code == 200:
                order = response.json()
                out[key] = {"version": order["version"], "status": order["status"]}
                output = {"found": True, **out[key]}
            else:
                out[key] = None
                output = {"found": False}
            self.history.op(Op(0, "read", key, None, output, invoke, complete))
        return out
