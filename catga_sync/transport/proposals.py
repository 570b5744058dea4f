"""Proposals forwarded from a follower to the leader: ``POST {url_prefix}/propose``.

A follower that is asked to run a replicated command sends the command's log entry data to the
leader, which appends it, waits until it is applied, and answers with the entry's index and the
command's outcome. The data carries its (client, seq) request id, so a retry after a lost
answer or a leader change is applied at most once (:mod:`catga_sync.fsm`).

Request body: ``{"protocol": 1, "data": "<base64>", "timeout": <seconds>}``, signed like peer
RPC. Answers: 200 ``{"index": n, "term": t, "outcome": {"result": ...} | {"error": {...}}}``
(``term``: the entry's, from which the follower learns that it is committed, without waiting
for the leader's next AppendEntries; an older leader leaves it out); 409
``{"error": "not_leader", "leader": "<endpoint or null>"}``; 504 ``{"error":
"commit_timeout"}``; 400/401/413 as for peer RPC.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from ..errors import CommitTimeoutError, ForwardingError, NoLeaderError, NotLeaderError
from .framed_route import FramedRoute
from .http11 import PeerConnection
from .signing import peer_post_headers
from .wire import PROTOCOL_VERSION, WireFormatError, seconds_within

PROPOSE_PATH = "/propose"
MAX_PROPOSAL_TIMEOUT = 300.0


def encode_proposal(data: bytes, timeout: float) -> bytes:
    body = {
        "protocol": PROTOCOL_VERSION,
        "data": base64.b64encode(data).decode("ascii"),
        "timeout": timeout,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_proposal(body: bytes) -> tuple[bytes, float]:
    """The entry data and the wait of a forwarded proposal; WireFormatError (400) if bad."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WireFormatError("malformed_json", "The proposal body is not JSON.") from None
    if not isinstance(obj, dict) or set(obj) != {"protocol", "data", "timeout"}:
        raise WireFormatError(
            "invalid_proposal", 'Expected {"protocol": 1, "data": <base64>, "timeout": <seconds>}.'
        )
    if obj["protocol"] != PROTOCOL_VERSION or isinstance(obj["protocol"], bool):
        raise WireFormatError(
            "unsupported_protocol",
            f"Protocol {obj['protocol']!r} is not spoken here (this node speaks "
            f"{PROTOCOL_VERSION}); run the same catga_sync version on every node.",
        )
    timeout = seconds_within(
        obj["timeout"], MAX_PROPOSAL_TIMEOUT, code="invalid_proposal", name="timeout"
    )
    if not isinstance(obj["data"], str):
        raise WireFormatError("invalid_proposal", "data must be base64 text")
    try:
        data = base64.b64decode(obj["data"], validate=True)
    except (binascii.Error, ValueError):
        raise WireFormatError("invalid_proposal", "data is not valid base64") from None
    if not data:
        raise WireFormatError("invalid_proposal", "data is empty")
    return data, timeout


def outcome_json(outcome: Any) -> dict[str, Any]:
    to_json = getattr(outcome, "to_json", None)
    if callable(to_json):
        result: dict[str, Any] = to_json()
        return result
    return {"result": outcome}


class ProposalClient:
    """Sends proposals to the leader over HTTP: one kept-alive connection per thread and
    leader (:mod:`catga_sync.transport.http11`; ``requests`` costs about a millisecond more of
    CPU per POST, and this is every command a follower takes). With ``frames``, a leader whose
    answers offer them gets each thread's proposals as frames on one open POST
    (:mod:`.framed_route`): a quarter of a Flask request's CPU on the leader, per command."""

    def __init__(
        self,
        *,
        sender_id: str,
        sender_name: str,
        secret: str | None,
        url_prefix: str,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        frames: bool = True,
    ) -> None:
        self.sender_id = sender_id
        self.sender_name = sender_name
        self.secret = secret or None
        self.url_prefix = url_prefix
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        """Verifies an https leader and presents our certificate; None: the system's store."""
        self.frames = frames
        self._local = threading.local()
        self._routes: dict[str, FramedRoute] = {}
        self._routes_lock = threading.Lock()

    def forward(
        self, leader: str, data: bytes, timeout: float
    ) -> tuple[int, int | None, dict[str, Any]]:
        """Propose ``data`` through ``leader``; returns the entry's index and term (None from
        a leader that does not say) and the outcome JSON.

        Raises NotLeaderError (naming the leader it knows) when ``leader`` no longer leads,
        CommitTimeoutError when it could not say in time, ForwardingError when it could not be
        reached or refused the request.
        """
        if not timeout > 0:  # a retry that woke after its deadline: nothing left to wait for
            raise CommitTimeoutError(
                f"no time was left to forward the proposal to the leader {leader}"
            )
        path = f"{self.url_prefix}{PROPOSE_PATH}"
        body = encode_proposal(data, timeout)
        headers = peer_post_headers(
            self.secret, path, body, self.sender_id, self.sender_name, time.time()
        )
        try:
            status, raw = self._post(leader, path, body, headers, timeout + self.connect_timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ForwardingError(f"could not reach the leader {leader}: {exc!r}") from exc
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if status == 200:
            term = answer.get("term")
            return (
                int(answer["index"]),
                term if type(term) is int else None,
                dict(answer["outcome"]),
            )
        if status == 409 and answer.get("error") == "not_leader":
            known = answer.get("leader")
            if known:
                raise NotLeaderError(known, known if "://" in str(known) else None)
            raise NoLeaderError()
        if status == 504:
            raise CommitTimeoutError(answer.get("message") or "the leader timed out")
        text = raw[:200].decode("utf-8", "replace")
        raise ForwardingError(
            f"the leader {leader} refused the proposal ({status}): {answer.get('message') or text}"
        )

    def _post(
        self, leader: str, path: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        """POST on this thread's connection to ``leader``. A kept-alive connection the leader
        closed while idle is replaced; the proposal is never sent twice by this method (a
        retry is the caller's, with the same request id)."""
        connections: dict[str, PeerConnection] = self._local.__dict__.setdefault("connections", {})
        connection = connections.get(leader)
        if connection is None:
            parts = urlsplit(leader)
            https = parts.scheme == "https"
            connection = PeerConnection(
                parts.hostname or "",
                parts.port or (443 if https else 80),
                https=https,
                timeout=self.connect_timeout,
                ssl_context=self.ssl_context,
            )
            connections[leader] = connection
        status, raw, _headers = self._route(leader, path).request(
            connection, body, headers, timeout=timeout
        )
        return status, raw

    def _route(self, leader: str, path: str) -> FramedRoute:
        """The leader's proposal route, shared by the threads: what one learns of its frames
        holds for all."""
        route = self._routes.get(leader)
        if route is None:
            with self._routes_lock:
                route = self._routes.get(leader)
                if route is None:
                    route = self._routes[leader] = FramedRoute(
                        leader,
                        path,
                        enabled=self.frames,
                        opening_headers=lambda: peer_post_headers(
                            self.secret, path, b"", self.sender_id, self.sender_name, time.time()
                        ),
                    )
        return route
