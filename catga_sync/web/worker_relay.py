"""The node's routes in a worker that does not host the node: relayed to the one that does.

gunicorn hands each connection to any of its workers; a peer's AppendEntries, an operator's
``catga status`` or a probe's ``/readyz`` may land in a worker that is only a local client of
the node (:mod:`catga_sync.web.workers`). :class:`WorkerRelay` wraps the app's WSGI callable and
passes those requests, as they came (method, path, query, headers, body), to the hosting
worker's loopback port, and its answer back; every other request is the app's own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import requests

from .worker_files import NO_HOST, WORKER_TOKEN_HEADER, HostInfo

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["WorkerRelay"]

log = logging.getLogger("catga_sync.workers")

OPS_PATHS = frozenset({"/health", "/livez", "/readyz", "/cluster", "/metrics"})
RELAY_TIMEOUT = 35.0
"""Seconds a relayed request may take: longer than the longest call a route waits for (a
proposal's or a long poll's timeout), which answers by itself first."""
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
    ) -> None:
        self.app = app
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
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key[5:].replace("_", "-").lower() not in _HOP_BY_HOP
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers[WORKER_TOKEN_HEADER] = target.token
        if target is NO_HOST:
            return _unavailable(start_response)
        query = environ.get("QUERY_STRING", "")
        url = target.url + environ.get("SCRIPT_NAME", "") + path + (f"?{query}" if query else "")
        try:
            answer = self._session().request(
                environ["REQUEST_METHOD"],
                url,
                data=body,
                headers=headers,
                timeout=RELAY_TIMEOUT,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            log.debug("relay of %s to the hosting worker failed: %s", path, exc)
            return _unavailable(start_response)
        content = answer.content
        out = [
            (key, value)
            for key, value in answer.raw.headers.items()
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-encoding"
        ]
        out.append(("Content-Length", str(len(content))))
        out.append(("X-Catga-Relayed-By", str(os.getpid())))  # which worker relayed it
        start_response(f"{answer.status_code} {answer.reason or ''}".strip(), out)
        return [content]

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
