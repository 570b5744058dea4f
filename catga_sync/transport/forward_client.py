"""The HTTP client that carries a command to the leader: ``POST {leader}{url_prefix}/forward``.

:class:`HttpClusterForwarder` is the default ``ClusterForwarder`` of
:class:`~catga_sync.forwarding.ForwardToLeaderBehavior`: it encodes the command
(:mod:`.forward_wire`), signs the request like peer RPC when a secret is set, and turns the
leader's answer back into the handler's result or error. A failure says whether the request may
have reached a handler (``LeaderUnreachableError.maybe_delivered``), so the behavior knows when
a retry could run the command twice and must keep the same idempotency key.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    CommitTimeoutError,
    ForwardingError,
    LeaderUnreachableError,
    NoLeaderError,
    NotLeaderError,
    UsageError,
)
from ..fsm import rebuild_error

# Without a mediator of its own the forwarder names the command with the one running the
# current send; the mediator is pure (no I/O, no node), below the transport.
from ..mediator import current_dispatch
from ..tls import TlsClient
from .forward_wire import FORWARD_PATH, HEADER_HOP, encode_forward_request
from .signing import peer_post_headers
from .wire import DEFAULT_URL_PREFIX, normalize_url_prefix

if TYPE_CHECKING:
    import requests
else:
    from .._lazy import requests

if TYPE_CHECKING:
    from ..config import ClusterConfig, Timeouts
    from ..mediator import Mediator

__all__ = ["HttpClusterForwarder"]


class _Node(Protocol):
    """What :meth:`HttpClusterForwarder.for_node` reads of a node."""

    raft_id: str
    node_id: str
    config: ClusterConfig
    timeouts: Timeouts


class HttpClusterForwarder:
    """The default forwarder: ``POST {leader}{url_prefix}/forward``, signed like peer RPC when
    a secret is set, with ``X-Catga-Hop: 1``. One pooled session per thread."""

    def __init__(
        self,
        *,
        sender_id: str,
        sender_name: str | None = None,
        secret: str | None = None,
        url_prefix: str = DEFAULT_URL_PREFIX,
        connect_timeout: float = 1.0,
        mediator: Mediator | None = None,
        tls: TlsClient | None = None,
    ) -> None:
        self.sender_id = sender_id
        self.tls = tls or TlsClient()
        """Verifies an https leader (``TlsCaFile``) and presents our certificate."""
        self.sender_name = sender_name or sender_id
        self.secret = secret or None
        self.url_prefix = normalize_url_prefix(url_prefix)
        self.connect_timeout = connect_timeout
        self.mediator = mediator
        """Names and rebuilds commands; by default, the mediator running the current send."""
        self._local = threading.local()

    @classmethod
    def for_node(cls, node: _Node, mediator: Mediator | None = None) -> HttpClusterForwarder:
        """A forwarder speaking for ``node``: its id, its secret, its URL prefix."""
        config = node.config
        return cls(
            sender_id=node.raft_id,
            sender_name=node.node_id,
            secret=config.secret,
            url_prefix=config.url_prefix,
            connect_timeout=node.timeouts.peer_request,
            mediator=mediator,
            tls=config.tls_client,
        )

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self.tls.configure(session)
            self._local.session = session
        return session

    def _mediator(self) -> Mediator:
        if self.mediator is not None:
            return self.mediator
        dispatch = current_dispatch()
        if dispatch is None:
            raise UsageError(
                "HttpClusterForwarder needs a mediator to name the command: give it one "
                "(mediator=...) or call it from a Mediator.send"
            )
        return dispatch.mediator

    def forward(
        self, command: Any, leader_endpoint: str, *, timeout: float, idempotency_key: str
    ) -> Any:
        mediator = self._mediator()
        name, payload = mediator.encode(command)
        path = f"{self.url_prefix}{FORWARD_PATH}"
        body = encode_forward_request(name, payload, idempotency_key, max(timeout, 0.001))
        headers = peer_post_headers(
            self.secret, path, body, self.sender_id, self.sender_name, time.time()
        )
        headers[HEADER_HOP] = "1"
        try:
            response = self._session().post(
                f"{leader_endpoint.rstrip('/')}{path}",
                data=body,
                headers=headers,
                timeout=(self.connect_timeout, max(timeout, 0.001) + self.connect_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise LeaderUnreachableError(
                f"could not reach the leader {leader_endpoint}: {exc}",
                maybe_delivered=_maybe_delivered(exc),
            ) from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        status = response.status_code
        if status == 200 and isinstance(answer, dict):
            error = answer.get("error")
            if isinstance(error, dict):
                raise rebuild_error(str(error.get("type")), str(error.get("message", "")))
            return mediator.decode_result(name, answer.get("result"))
        answer = answer if isinstance(answer, dict) else {}
        message = str(answer.get("message") or response.text[:300])
        if status == 409 and answer.get("error") == "not_leader":
            known = answer.get("leader")
            if known:
                raise NotLeaderError(leader_id=known, leader_endpoint=known)
            raise NoLeaderError()
        if status == 503:
            raise LeaderUnreachableError(
                f"the leader {leader_endpoint} is not serving ({status}): {message}",
                maybe_delivered=False,
            )
        if status == 504:
            raise CommitTimeoutError(
                f"the leader {leader_endpoint} did not finish in time: {message}. The outcome "
                f"is unknown; retrying with the same idempotency key ({idempotency_key}) is safe.",
                idempotency_key,
            )
        if status >= 500:
            raise LeaderUnreachableError(
                f"the leader {leader_endpoint} failed ({status}): {message}"
            )
        raise ForwardingError(
            f"the leader {leader_endpoint} refused the forwarded command {name!r} ({status} "
            f"{answer.get('error', '')}): {message}"
        )


def _maybe_delivered(exc: requests.RequestException) -> bool:
    """False only when the connection itself could not be made (nothing was sent)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        from urllib3.exceptions import NewConnectionError

        return not isinstance(reason, NewConnectionError)
    return True
