"""The node's routes in a worker that does not host the node: relayed to the one that does.

gunicorn hands each connection to any of its workers; a peer's AppendEntries, an operator's
``catga status`` or a probe's ``/readyz`` may land in a worker that is only a local client of
the node (:mod:`catga_sync.web.workers`). :class:`WorkerRelay` wraps the app's WSGI callable and
passes those requests, as they came (method, path, query, headers, body), to the hosting
worker's loopback port, and its answer back; every other request is the app's own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .worker_files import NO_HOST, WORKER_TOKEN_HEADER, HostInfo

if TYPE_CHECKING:
    import requests
else:
    from .._lazy import requests

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["WorkerRelay"]

log = logging.getLogger("catga_sync.workers")

OPS_PATHS = frozenset({"/health", "/livez", "/readyz", "/cluster", "/metrics"})
RELAY_TIMEOUT = 35.0
"""Seconds a relayed request may take: longer than the longest call a route waits for (a
proposal's or a long poll's timeout), which answers by itself first; a lock request may wait
as long as its body asks, and this much more."""
RELAY_CONNECT_TIMEOUT = 2.0
LOCK_ACQUIRE_SUFFIX = "/client/locks/acquire"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_UNAVAILABLE = (
    b'{"error":"host_unavailable","message":"the worker that hosts this node is restarting; '
    b'retry in a moment"}'
)


class WorkerRelay:
    """WSGI middleware: the node's routes go to the hosting worker while this one is a client.

    ``target()`` says where (None: serve here). ``url_prefix`` is the node's peer prefix
    (``/_catga``); ``ops`` adds /health, /livez, /readyz, /cluster and /metrics.
    """

    def __init__(
        self,
        app: WSGIApplication,
        target: Callable[[], HostInfo | None],
        *,
        url_prefix: str,
        ops: bool,
        max_body_bytes: int = 16 << 20,
    ) -> None:
        self.app = app
        self._max_body = max_body_bytes
        self._target = target
        self._prefix = url_prefix.rstrip("/") + "/"
        self._ops = ops
        self._local = threading.local()

    def relays(self, path: str) -> bool:
        return path.startswith(self._prefix) or (self._ops and path in OPS_PATHS)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if not self.relays(path):
            return self.app(environ, start_response)
        target = self._target()
        if target is None:
            return self.app(environ, start_response)
        return self._relay(target, path, environ, start_response)

    def _relay(
        self,
        target: HostInfo,
        path: str,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        if target is NO_HOST:
            return _unavailable(start_response)
        body = _read_body(environ, self._max_body)
        if body is None:
            return _answer(start_response, "413 REQUEST ENTITY TOO LARGE", _TOO_LARGE)
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key[5:].replace("_", "-").lower() not in _HOP_BY_HOP
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers[WORKER_TOKEN_HEADER] = target.token
        headers["X-Forwarded-Host"] = environ.get("HTTP_HOST", "")
        headers["X-Forwarded-For"] = environ.get("REMOTE_ADDR", "")
        query = environ.get("QUERY_STRING", "")
        url = target.url + environ.get("SCRIPT_NAME", "") + path + (f"?{query}" if query else "")
        method = environ["REQUEST_METHOD"]
        try:
            answer = self._session().request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=(RELAY_CONNECT_TIMEOUT, _read_timeout(path, body)),
                allow_redirects=False,
                stream=True,  # a backup (GET /_catga/admin/snapshot) is streamed, not held
            )
        except requests.RequestException as exc:
            log.debug("relay of %s to the hosting worker failed: %s", path, exc)
            return _unavailable(start_response)
        out = [
            (key, value)
            for key, value in answer.raw.headers.items()
            if key.lower() not in _HOP_BY_HOP
        ]
        length = answer.headers.get("Content-Length")
        if length is not None:  # as the host said (a HEAD's too: its body is not sent)
            out.append(("Content-Length", length))
        out.append(("X-Catga-Relayed-By", str(os.getpid())))  # which worker relayed it
        start_response(f"{answer.status_code} {answer.reason or ''}".strip(), out)
        return _Streamed(answer)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # loopback: never through a proxy from the environment
        return session


def _unavailable(start_response: StartResponse) -> Iterable[bytes]:
    start_response(
        "503 SERVICE UNAVAILABLE",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(_UNAVAILABLE))),
            ("Retry-After", "1"),
        ],
    )
    return [_UNAVAILABLE]


_TOO_LARGE = b'{"error":"body_too_large","message":"the request body is over the node\'s limit"}'


def _answer(start_response: StartResponse, status: str, body: bytes) -> Iterable[bytes]:
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes | None:
    """The request body (chunked too: the server decodes it), or None when it is over
    ``limit`` — refused before more of it is read, as the node's own routes would."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        size = int(length)
        if size > limit:
            return None
        return bytes(stream.read(size)) if size > 0 else b""
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return b""
    body = stream.read(limit + 1)
    return None if len(body) > limit else bytes(body)


def _read_timeout(path: str, body: bytes) -> float:
    if path.endswith(LOCK_ACQUIRE_SUFFIX) and body:
        try:
            wait = float(json.loads(body).get("wait") or 0.0)
        except (ValueError, TypeError, AttributeError):
            wait = 0.0
        return RELAY_TIMEOUT + max(0.0, min(wait, 86400.0))
    return RELAY_TIMEOUT


class _Streamed:
    """The host's answer body, passed on in chunks; the connection goes back to the pool when
    the server is done with it (WSGI ``close``)."""

    def __init__(self, answer: requests.Response) -> None:
        self._answer = answer

    def __iter__(self) -> Iterator[bytes]:
        yield from self._answer.raw.stream(64 << 10, decode_content=False)

    def close(self) -> None:
        self._answer.close()
