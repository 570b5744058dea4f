"""Leader-aware Flask views: ``@cluster.leader_only`` and ``@cluster.forward_to_leader``.

For apps without the mediator: the same two behaviors, on plain routes.

- ``leader_only``: on a follower the view does not run; the answer is 503 with
  ``{"error": "not_leader", "message": "This node is not the leader. Leader: <endpoint>",
  "leader": <endpoint or null>}``.
- ``forward_to_leader``: on a follower the HTTP request is relayed to the leader — method,
  path and query, headers (less the hop-by-hop ones), body — with ``X-Catga-Hop: 1``, and the
  leader's answer comes back with its status, headers and body untouched. A request that
  carries the hop header already is served here if this node leads, else refused like
  ``leader_only``: never forwarded twice. One deadline bounds the relay, retries included.

503 rather than 421 or 409: the request is fine and the resource in no conflicting state; this
node just cannot serve it now, which is what load balancers and clients retry elsewhere or
later (docs/request-forwarding.rst).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity
from flask import Response, jsonify, request

from ..config_values import Duration, seconds
from ..errors import NoLeaderError, NotLeaderError
from ..forwarding import not_leader_error, stop_at
from ..transport.forward_wire import DEFAULT_FORWARD_TIMEOUT, HEADER_HOP

if TYPE_CHECKING:
    import requests
else:
    from .._lazy import requests

if TYPE_CHECKING:
    from ..node import ClusterNode

F = TypeVar("F", bound=Callable[..., Any])

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that concern one connection only (RFC 9110 §7.6.1); never relayed."""


def not_leader_response(exc: NotLeaderError) -> Response:
    """The 503 answer of a node that cannot serve a leader-only request."""
    response = jsonify(
        error="not_leader", message=str(exc), leader=exc.leader_endpoint or exc.leader_id
    )
    response.status_code = 503
    response.headers["Retry-After"] = "1"
    return response


def _refusal(node: ClusterNode) -> Response:
    return not_leader_response(not_leader_error(node.coordinator))


def leader_only(get_node: Callable[[], ClusterNode]) -> Callable[[F], F]:
    """Decorator: run the view on the leader only; elsewhere answer 503 ``not_leader``."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            node = get_node()
            if node.status.is_leader:
                return view(*args, **kwargs)
            return _refusal(node)

        return wrapper  # type: ignore[return-value]

    return decorate


def forward_to_leader(
    get_node: Callable[[], ClusterNode],
    *,
    timeout: Duration = DEFAULT_FORWARD_TIMEOUT,
    connect_timeout: Duration | None = None,
) -> Callable[[F], F]:
    """Decorator: run the view on the leader; on a follower relay the request there and return
    the leader's answer intact. ``timeout`` (seconds or ``timedelta``) bounds the whole relay,
    retries included."""
    timeout, connect_timeout = seconds(timeout), seconds(connect_timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    relay = _Relay(timeout, connect_timeout)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            node = get_node()
            if node.status.is_leader:
                return view(*args, **kwargs)
            if request.headers.get(HEADER_HOP) is not None:
                return _refusal(node)  # it took its one hop already
            relayed = relay(node)
            if relayed is None:  # this node became the leader meanwhile
                return view(*args, **kwargs)
            return relayed

        return wrapper  # type: ignore[return-value]

    return decorate


class _Unsent(Exception):
    """The request did not reach a view (no leader, connection refused, not the leader)."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.hint = hint


class _Relay:
    """Relays the current request to the leader; one pooled session per thread."""

    def __init__(self, timeout: float, connect_timeout: float | None) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.headers.clear()  # relay the client's headers, add none of our own
            self._local.session = session
        return session

    def __call__(self, node: ClusterNode) -> Response | None:
        """The leader's answer, an error answer, or None when this node leads now."""
        deadline = time.monotonic() + self.timeout
        connect = self.connect_timeout or node.timeouts.peer_request
        body = request.get_data(cache=True)
        headers = _relayed_headers(request.headers.items())
        headers[HEADER_HOP] = "1"
        if request.remote_addr:
            previous = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = (
                f"{previous}, {request.remote_addr}" if previous else request.remote_addr
            )
        target = request.script_root + request.path
        if request.query_string:
            target += "?" + request.query_string.decode("latin-1")
        hint: list[str | None] = [None]
        tls = node.config.tls_client.requests_options()

        def attempt() -> tuple[requests.Response, bytes] | None:
            if node.status.is_leader:
                return None
            leader, hint[0] = hint[0] or node.status.leader_endpoint, None
            if leader is None or leader == node.raft_id:
                raise _Unsent("no leader is known")
            remaining = deadline - time.monotonic()
            try:
                response = self._session().request(
                    request.method,
                    leader.rstrip("/") + target,
                    data=body,
                    headers=headers,
                    timeout=(min(connect, max(remaining, 0.001)), max(remaining, 0.001)),
                    allow_redirects=False,
                    stream=True,
                    **tls,  # the node's TlsCaFile and client certificate
                )
            except (requests.ConnectTimeout, requests.ConnectionError) as exc:
                if _connect_failed(exc):
                    raise _Unsent(f"could not connect to {leader}: {exc}") from exc
                raise
            try:
                content = response.raw.read(decode_content=False)  # as sent: gzip stays gzip
            finally:
                response.close()
            if response.status_code == 503:
                refused = _not_leader_answer(response, content)
                if refused is not None:  # the target is no leader: its view did not run
                    hint[0] = refused if refused and refused != leader else None
                    raise _Unsent(f"{leader} is not the leader")
            return response, content

        retrying = tenacity.Retrying(
            stop=stop_at(deadline),
            wait=tenacity.wait_exponential(multiplier=0.01, max=0.25),
            retry=tenacity.retry_if_exception_type(_Unsent),
            reraise=True,
        )
        try:
            answer = retrying(attempt)
        except _Unsent as exc:
            known = node.status.leader_endpoint
            if known is None:
                return not_leader_response(
                    NoLeaderError(
                        message=f"This node is not the leader. Leader: none (no leader known "
                        f"within {self.timeout:g}s; retry later)"
                    )
                )
            return _error(
                502,
                "leader_unreachable",
                f"The leader {known} could not be reached within {self.timeout:g}s ({exc}); "
                "the request was not delivered. Retry later.",
            )
        except requests.Timeout:
            return _error(
                504,
                "leader_timeout",
                f"The leader did not answer within {self.timeout:g}s; whether it handled the "
                "request is unknown.",
            )
        except requests.RequestException as exc:
            return _error(
                502,
                "leader_unreachable",
                f"The connection to the leader failed ({exc}); whether it handled the request "
                "is unknown.",
            )
        return None if answer is None else _relayed_response(*answer)


def _relayed_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request headers minus hop-by-hop ones (and those the Connection header names),
    minus Host and Content-Length, which the relay sets for its own connection."""
    pairs = list(items)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    drop = HOP_BY_HOP | named | {"host", "content-length"}
    relayed: dict[str, str] = {}
    for name, value in pairs:
        if name.lower() in drop:
            continue
        relayed[name] = f"{relayed[name]}, {value}" if name in relayed else value
    return relayed


def _relayed_response(upstream: requests.Response, content: bytes) -> Response:
    raw_headers = list(upstream.raw.headers.items())
    named = {
        token.strip().lower()
        for name, value in raw_headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    drop = HOP_BY_HOP | named | {"content-length"}
    response = Response(content, status=upstream.status_code)
    response.headers.clear()
    for name, value in raw_headers:
        if name.lower() not in drop:
            response.headers.add(name, value)
    length = upstream.headers.get("Content-Length")
    if length is not None:
        response.headers["Content-Length"] = length  # the leader's, right for HEAD too
    else:
        response.headers["Content-Length"] = str(len(content))
    return response


def _not_leader_answer(response: requests.Response, content: bytes) -> str | None:
    """The leader named by another node's ``not_leader`` refusal ("" when none is known), or
    None when the 503 is something else (the application's own)."""
    if "json" not in response.headers.get("Content-Type", "") or response.headers.get(
        "Content-Encoding"
    ):
        return None
    try:
        answer = json.loads(content or b"null")
    except ValueError:
        return None
    if not isinstance(answer, dict) or answer.get("error") != "not_leader":
        return None
    leader = answer.get("leader")
    return leader if isinstance(leader, str) else ""


def _connect_failed(exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    from urllib3.exceptions import NewConnectionError

    return isinstance(reason, NewConnectionError)


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify(error=code, message=message)
    response.status_code = status
    return response
