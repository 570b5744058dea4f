"""HMAC-SHA256 signatures of peer requests, so only holders of the cluster secret can talk Raft.

The signature covers one canonical byte string::

    METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" SENDER "\\n" BODY

``METHOD`` upper case (``POST``); ``PATH`` the request's URL path, without scheme, host or
query (``/_catga/raft``); ``TIMESTAMP`` exactly the text of the ``X-Catga-Timestamp`` header
(Unix seconds in decimal, written with six decimals by :func:`format_timestamp`); ``SENDER``
exactly the ``X-Catga-Sender`` header; ``BODY`` the raw body bytes. The key is the secret in
UTF-8; the signature is the lowercase hex digest in ``X-Catga-Signature``.

The clock is always passed in (``now``), so tests use a fixed one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping

from ..errors import PeerAuthError
from .wire import HEADER_NODE, HEADER_SENDER, HEADER_SIGNATURE, HEADER_TIMESTAMP

__all__ = [
    "PeerAuthError",
    "ReplayGuard",
    "canonical_string",
    "format_timestamp",
    "peer_post_headers",
    "reply_headers",
    "sign",
    "signed_headers",
    "verify",
    "verify_reply",
]

_TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


def format_timestamp(timestamp: float) -> str:
    """The header text for ``timestamp``: decimal Unix seconds with six decimals."""
    if not timestamp >= 0:
        raise ValueError(f"a signature timestamp must be a non-negative number, not {timestamp}")
    return f"{timestamp:.6f}"


def canonical_string(method: str, path: str, timestamp: str, sender: str, body: bytes) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    for name, value in (("method", method), ("path", path), ("sender", sender)):
        if "\n" in value or "\r" in value:
            raise ValueError(f"the {name} of a signed request cannot contain a line break")
    head = f"{method.upper()}\n{path}\n{timestamp}\n{sender}\n"
    return head.encode("utf-8") + body


def _digest(secret: str, canonical: bytes) -> str:
    if not secret:
        raise ValueError("the cluster secret is empty; configure a non-empty secret, or none")
    return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path: str, body: bytes, sender: str, timestamp: float) -> str:
    """The hex HMAC-SHA256 of a request sent by ``sender`` at ``timestamp`` (Unix seconds)."""
    return _digest(
        secret, canonical_string(method, path, format_timestamp(timestamp), sender, body)
    )


def signed_headers(
    secret: str, method: str, path: str, body: bytes, sender: str, now: float
) -> dict[str, str]:
    """The ``X-Catga-Sender``, ``X-Catga-Timestamp`` and ``X-Catga-Signature`` headers."""
    timestamp = format_timestamp(now)
    signature = _digest(secret, canonical_string(method, path, timestamp, sender, body))
    return {HEADER_SENDER: sender, HEADER_TIMESTAMP: timestamp, HEADER_SIGNATURE: signature}


def peer_post_headers(
    secret: str | None, path: str, body: bytes, sender: str, sender_name: str, now: float
) -> dict[str, str]:
    """Every header of a POST from one node to another's peer routes: JSON, the sender's Raft
    id and name, and the signature when the cluster has a secret."""
    headers = {"Content-Type": "application/json", HEADER_SENDER: sender, HEADER_NODE: sender_name}
    if secret:
        headers.update(signed_headers(secret, "POST", path, body, sender, now))
    return headers


def reply_headers(
    secret: str | None, path: str, request_signature: str, body: bytes, responder: str, now: float
) -> dict[str, str]:
    """The signature headers of an inline reply (none without a secret). The reply is signed
    like a request whose method is ``REPLY`` and whose path carries the request's signature,
    so a reply is bound to the one request it answers and cannot be replayed to another."""
    if not secret:
        return {}
    return signed_headers(secret, "REPLY", f"{path}#{request_signature}", body, responder, now)


def verify_reply(
    secret: str,
    path: str,
    request_signature: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    window: float,
) -> None:
    """Check an inline reply signed by :func:`reply_headers`; raise PeerAuthError."""
    verify(secret, "REPLY", f"{path}#{request_signature}", body, headers, now, window)


def verify(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    window: float,
) -> None:
    """Check a request's signature and timestamp; raise :class:`PeerAuthError` saying what failed.

    The signature is checked before the clock, so a wrong secret is reported as such even when
    the clocks also disagree. Digests are compared in constant time.
    """
    sender = _header(headers, HEADER_SENDER)
    timestamp = _header(headers, HEADER_TIMESTAMP)
    signature = _header(headers, HEADER_SIGNATURE)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise PeerAuthError(
            f"malformed {HEADER_TIMESTAMP} header {timestamp[:40]!r}: expected Unix seconds "
            "in decimal, such as 1767225600.123456"
        )
    if not _SIGNATURE.fullmatch(signature):
        raise PeerAuthError(
            f"malformed {HEADER_SIGNATURE} header: expected 64 hex digits of HMAC-SHA256"
        )
    try:
        canonical = canonical_string(method, path, timestamp, sender, body)
    except ValueError as exc:
        raise PeerAuthError(f"cannot check the signature: {exc}") from None
    expected = _digest(secret, canonical)
    if not hmac.compare_digest(expected.encode("ascii"), signature.lower().encode("ascii")):
        raise PeerAuthError(
            f"bad signature from {sender!r}: the request was not signed with this node's cluster "
            "secret (or was altered on the way). Give every node the same secret "
            "(CATGA_CLUSTER_SECRET / Cluster__Secret)."
        )
    skew = now - float(timestamp)
    if abs(skew) > window:
        direction = "behind" if skew > 0 else "ahead of"
        raise PeerAuthError(
            f"clock skew of {abs(skew):.1f} s beyond the {window:g} s signature window: the "
            f"request from {sender!r} is timestamped {abs(skew):.1f} s {direction} this node's "
            "clock. Synchronize the machines' clocks (NTP); a replayed old request looks the same."
        )


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if not value:
        raise PeerAuthError(
            f"missing {name} header: this node requires signed peer requests. Give every node "
            "the same cluster secret (CATGA_CLUSTER_SECRET / Cluster__Secret)."
        )
    return value


class ReplayGuard:
    """Refuses a signature seen before while its timestamp is still inside the window.

    Within the window an eavesdropper could otherwise resend a captured request verbatim. Raft
    would shrug that off (a network may duplicate messages, and stale terms and indexes are
    ignored), but refusing it costs one dict entry per request for ``window`` seconds.
    """

    def __init__(self, window: float, *, max_entries: int = 200_000) -> None:
        self._window = window
        self._max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> forget after
        self._lock = threading.Lock()

    def check(self, signature: str, timestamp: float, now: float) -> None:
        """Remember ``signature``; raise :class:`PeerAuthError` if it was already seen."""
        key = signature.lower()
        with self._lock:
            self._forget_expired(now)
            expires = self._seen.get(key)
            if expires is not None and expires >= now:
                raise PeerAuthError(
                    "replayed request: this exact signed request was already received. "
                    "Peers never resend a request verbatim; look for a proxy that retries "
                    "POSTs, or for someone replaying captured traffic."
                )
            self._seen[key] = timestamp + self._window
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_entries:
                self._seen.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        # Entries arrive roughly in timestamp order, so expired ones gather at the front.
        while self._seen:
            key, expires = next(iter(self._seen.items()))
            if expires >= now:
                break
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)
