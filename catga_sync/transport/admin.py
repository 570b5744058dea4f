"""The admin routes' wire: paths, and a client that signs its requests like a peer.

``GET {url_prefix}/admin/members`` (``?local=true``: this node's own view, not forwarded),
``POST`` and ``DELETE {url_prefix}/admin/members`` with ``{"endpoint": ..., "voter": true}``,
``POST {url_prefix}/admin/transfer-leader`` with ``{"to": ...}``, and ``GET
{url_prefix}/admin/snapshot`` (a backup: :mod:`catga_sync.storage.backup`). They are peer routes:
with a cluster secret, a request is signed (:mod:`~catga_sync.transport.signing`) over its
method, path and body. A node forwards an admin call to the leader with
:data:`HEADER_FORWARDED` set, so the leader answers ``409 not_leader`` rather than forwarding
again. Both nodes (forwarding) and the ``catga`` command line (:mod:`catga_sync.cli`) use
:class:`AdminClient`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..errors import (
    CommitTimeoutError,
    ForwardingError,
    LeadershipTransferError,
    LeaderUnreachableError,
    MembershipChangeError,
    NoLeaderError,
    NotLeaderError,
    PeerAuthError,
)
from ..tls import TlsClient
from .signing import signed_headers
from .wire import HEADER_NODE, HEADER_SENDER

if TYPE_CHECKING:
    import requests
else:
    from .._lazy import requests

__all__ = [
    "ADMIN_MEMBERS_PATH",
    "ADMIN_ROUTES",
    "ADMIN_SNAPSHOT_PATH",
    "ADMIN_TRANSFER_PATH",
    "HEADER_FORWARDED",
    "AdminClient",
]

ADMIN_MEMBERS_PATH = "/admin/members"
ADMIN_TRANSFER_PATH = "/admin/transfer-leader"
ADMIN_SNAPSHOT_PATH = "/admin/snapshot"
ADMIN_ROUTES = {
    "members": ADMIN_MEMBERS_PATH,
    "transfer": ADMIN_TRANSFER_PATH,
    "snapshot": ADMIN_SNAPSHOT_PATH,
}
HEADER_FORWARDED = "X-Catga-Forwarded"
"""Set on an admin call a node forwards to the leader: it is never forwarded twice."""


class AdminClient:
    """Signed HTTP requests to a node's admin routes (``requests``: admin calls are rare)."""

    def __init__(
        self,
        *,
        secret: str | None,
        url_prefix: str = "/_catga",
        sender: str = "catga-cli",
        sender_name: str = "catga-cli",
        tls: TlsClient | None = None,
    ) -> None:
        self.secret = secret or None
        self.url_prefix = url_prefix.rstrip("/")
        self.sender = sender
        self.sender_name = sender_name
        self._session = requests.Session()
        # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE override a
        # session's verify, and the CA given (TlsCaFile, --tls-ca-file) must win.
        self._tls = (tls or TlsClient()).requests_options()

    def request(
        self,
        base_url: str,
        method: str,
        route: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float,
        local: bool = False,
        forwarded: bool = False,
    ) -> tuple[int, Any]:
        """Send one admin request to ``base_url``; returns (status, parsed JSON or None).
        Raises LeaderUnreachableError when the node cannot be reached."""
        path = f"{self.url_prefix}{ADMIN_ROUTES[route]}"
        raw = b"" if body is None else json.dumps(body).encode("utf-8")
        headers = {HEADER_SENDER: self.sender, HEADER_NODE: self.sender_name}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if forwarded:
            headers[HEADER_FORWARDED] = "1"
        if self.secret:
            headers.update(signed_headers(self.secret, method, path, raw, self.sender, time.time()))
        url = base_url.rstrip("/") + path + ("?local=true" if local else "")
        try:
            response = self._session.request(
                method, url, data=raw, headers=headers, timeout=timeout, **self._tls
            )
        except requests.RequestException as exc:
            raise LeaderUnreachableError(
                f"could not reach {base_url} ({type(exc).__name__}): is the node running, and "
                "is the URL its endpoint?",
                maybe_delivered=not isinstance(exc, requests.ConnectionError),
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        return response.status_code, answer

    def call(
        self,
        base_url: str,
        method: str,
        route: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float,
        local: bool = False,
        forwarded: bool = True,
    ) -> dict[str, Any]:
        """Like :meth:`request`, and turn an error answer into the typed error it stands for."""
        status, answer = self.request(
            base_url, method, route, body, timeout=timeout, local=local, forwarded=forwarded
        )
        if status == 200 and isinstance(answer, dict):
            return answer
        raise error_of(base_url, status, answer)


def error_of(base_url: str, status: int, answer: Any) -> Exception:
    """The typed error an admin route's error answer stands for."""
    details = answer if isinstance(answer, dict) else {}
    code = str(details.get("error") or "")
    message = str(details.get("message") or f"{base_url} answered {status}")
    if code == "not_leader":
        leader = details.get("leader")
        return NotLeaderError(leader, leader, message) if leader else NoLeaderError(message=message)
    if code == "membership_change":
        return MembershipChangeError(message)
    if code == "leadership_transfer":
        return LeadershipTransferError(message)
    if code == "commit_timeout":
        return CommitTimeoutError(message)
    if status == 401:
        return PeerAuthError(f"{base_url} refused the request: {message}")
    return ForwardingError(f"{base_url} refused the request ({status} {code}): {message}")
