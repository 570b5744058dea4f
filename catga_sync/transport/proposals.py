"""Proposals forwarded from a follower to the leader: ``POST {url_prefix}/propose``.

A follower that is asked to run a replicated command sends the command's log entry data to the
leader, which appends it, waits until it is applied, and answers with the entry's index and the
command's outcome. The data carries its (client, seq) request id, so a retry after a lost
answer or a leader change is applied at most once (:mod:`catga_sync.fsm`).

Request body: ``{"protocol": 1, "data": "<base64>", "timeout": <seconds>}``, signed like peer
RPC. Answers: 200 ``{"index": n, "outcome": {"result": ...} | {"error": {...}}}``; 409
``{"error": "not_leader", "leader": "<endpoint or null>"}``; 504 ``{"error":
"commit_timeout"}``; 400/401/413 as for peer RPC.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from typing import Any

import requests

from ..errors import CommitTimeoutError, ForwardingError, NoLeaderError, NotLeaderError
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
    """Sends proposals to the leader over HTTP (one pooled session, safe across threads)."""

    def __init__(
        self,
        *,
        sender_id: str,
        sender_name: str,
        secret: str | None,
        url_prefix: str,
        connect_timeout: float,
    ) -> None:
        self.sender_id = sender_id
        self.sender_name = sender_name
        self.secret = secret or None
        self.url_prefix = url_prefix
        self.connect_timeout = connect_timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._local.session = session
        return session

    def forward(self, leader: str, data: bytes, timeout: float) -> tuple[int, dict[str, Any]]:
        """Propose ``data`` through ``leader``; returns the entry index and the outcome JSON.

        Raises NotLeaderError (naming the leader it knows) when ``leader`` no longer leads,
        CommitTimeoutError when it could not say in time, ForwardingError when it could not be
        reached or refused the request.
        """
        path = f"{self.url_prefix}{PROPOSE_PATH}"
        body = encode_proposal(data, timeout)
        headers = peer_post_headers(
            self.secret, path, body, self.sender_id, self.sender_name, time.time()
        )
        try:
            response = self._session().post(
                f"{leader}{path}",
                data=body,
                headers=headers,
                timeout=(self.connect_timeout, timeout + self.connect_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ForwardingError(f"could not reach the leader {leader}: {exc}") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code == 200:
            return int(answer["index"]), dict(answer["outcome"])
        if response.status_code == 409 and answer.get("error") == "not_leader":
            known = answer.get("leader")
            if known:
                raise NotLeaderError(known, known if "://" in str(known) else None)
            raise NoLeaderError()
        if response.status_code == 504:
            raise CommitTimeoutError(answer.get("message") or "the leader timed out")
        raise ForwardingError(
            f"the leader {leader} refused the proposal ({response.status_code}): "
            f"{answer.get('message') or response.text[:200]}"
        )
