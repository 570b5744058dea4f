"""Signing peer requests: the canonical string, tampering, the clock window, replays."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from catga_sync.errors import CatgaError, PeerAuthError
from catga_sync.transport import signing
from catga_sync.transport.signing import (
    ReplayGuard,
    canonical_string,
    format_timestamp,
    sign,
    signed_headers,
    verify,
)

SECRET = "correct horse battery staple"
PATH = "/_catga/raft"
BODY = b'{"protocol":1,"messages":[]}'
SENDER = "http://127.0.0.1:5001"
NOW = 1_767_225_600.25  # a fixed clock
WINDOW = 30.0


def headers_at(now: float = NOW, **changes: str) -> dict[str, str]:
    headers = signed_headers(SECRET, "POST", PATH, BODY, SENDER, now)
    headers.update(changes)
    return headers


def test_round_trip() -> None:
    headers = headers_at()
    assert set(headers) == {"X-Catga-Sender", "X-Catga-Timestamp", "X-Catga-Signature"}
    assert headers["X-Catga-Sender"] == SENDER
    assert headers["X-Catga-Timestamp"] == "1767225600.250000"
    verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


def test_the_canonical_string_is_documented_exactly() -> None:
    expected = hmac.new(
        SECRET.encode(),
        b"POST\n/_catga/raft\n1767225600.250000\nhttp://127.0.0.1:5001\n" + BODY,
        hashlib.sha256,
    ).hexdigest()
    assert sign(SECRET, "post", PATH, BODY, SENDER, NOW) == expected
    assert headers_at()["X-Catga-Signature"] == expected
    assert canonical_string("post", PATH, "1.5", SENDER, b"x") == (
        b"POST\n/_catga/raft\n1.5\nhttp://127.0.0.1:5001\nx"
    )


def test_header_names_are_case_insensitive() -> None:
    lowered = {k.lower(): v for k, v in headers_at().items()}
    verify(SECRET, "POST", PATH, BODY, lowered, NOW, WINDOW)


def test_peer_auth_error_is_a_catga_error_and_a_permission_error() -> None:
    assert issubclass(PeerAuthError, CatgaError)
    assert issubclass(PeerAuthError, PermissionError)
    assert signing.PeerAuthError is PeerAuthError


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", PATH, BODY),
        ("POST", "/_catga/raft/info", BODY),
        ("POST", PATH, BODY + b" "),
        ("POST", PATH, b'{"protocol":1,"messages":[{}]}'),
    ],
    ids=["method", "path", "body", "body-replaced"],
)
def test_tampered_request_is_refused(method: str, path: str, body: bytes) -> None:
    with pytest.raises(PeerAuthError, match="bad signature"):
        verify(SECRET, method, path, body, headers_at(), NOW, WINDOW)


def test_tampered_timestamp_is_refused() -> None:
    headers = headers_at(**{"X-Catga-Timestamp": format_timestamp(NOW + 1)})
    with pytest.raises(PeerAuthError, match="bad signature"):
        verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


def test_tampered_sender_is_refused() -> None:
    headers = headers_at(**{"X-Catga-Sender": "http://127.0.0.1:5002"})
    with pytest.raises(
        PeerAuthError, match=re.escape("bad signature from 'http://127.0.0.1:5002'")
    ):
        verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


def test_another_secret_is_refused() -> None:
    headers = signed_headers("another secret", "POST", PATH, BODY, SENDER, NOW)
    with pytest.raises(PeerAuthError, match="CATGA_CLUSTER_SECRET"):
        verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


@pytest.mark.parametrize("missing", ["X-Catga-Sender", "X-Catga-Timestamp", "X-Catga-Signature"])
def test_missing_header_is_named(missing: str) -> None:
    headers = headers_at()
    del headers[missing]
    with pytest.raises(PeerAuthError, match=f"missing {missing} header"):
        verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("X-Catga-Timestamp", "yesterday", "malformed X-Catga-Timestamp"),
        ("X-Catga-Timestamp", "-5", "malformed X-Catga-Timestamp"),
        ("X-Catga-Timestamp", "١٢٣", "malformed X-Catga-Timestamp"),  # non-ASCII digits
        ("X-Catga-Signature", "abc", "malformed X-Catga-Signature"),
        ("X-Catga-Signature", "g" * 64, "malformed X-Catga-Signature"),
    ],
)
def test_malformed_headers_are_refused(name: str, value: str, match: str) -> None:
    with pytest.raises(PeerAuthError, match=match):
        verify(SECRET, "POST", PATH, BODY, headers_at(**{name: value}), NOW, WINDOW)


def test_uppercase_hex_signature_is_accepted() -> None:
    headers = headers_at()
    headers["X-Catga-Signature"] = headers["X-Catga-Signature"].upper()
    verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


@pytest.mark.parametrize("offset", [-WINDOW, -1.0, 0.0, 1.0, WINDOW])
def test_timestamps_inside_the_window_pass(offset: float) -> None:
    verify(SECRET, "POST", PATH, BODY, headers_at(NOW + offset), NOW, WINDOW)


@pytest.mark.parametrize(
    ("offset", "direction"), [(-WINDOW - 0.5, "behind"), (WINDOW + 12.0, "ahead of")]
)
def test_timestamps_outside_the_window_fail_with_the_skew(offset: float, direction: str) -> None:
    with pytest.raises(PeerAuthError) as caught:
        verify(SECRET, "POST", PATH, BODY, headers_at(NOW + offset), NOW, WINDOW)
    text = str(caught.value)
    assert f"clock skew of {abs(offset):.1f} s beyond the 30 s signature window" in text
    assert direction in text
    assert "NTP" in text


def test_a_bad_signature_is_reported_before_the_clock() -> None:
    headers = signed_headers("another secret", "POST", PATH, BODY, SENDER, NOW - 3600)
    with pytest.raises(PeerAuthError, match="bad signature"):
        verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


def test_digests_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", recording)
    verify(SECRET, "POST", PATH, BODY, headers_at(), NOW, WINDOW)
    with pytest.raises(PeerAuthError):
        verify(SECRET, "POST", PATH, BODY + b"!", headers_at(), NOW, WINDOW)
    assert len(calls) == 2


def test_line_breaks_cannot_forge_the_canonical_string() -> None:
    with pytest.raises(ValueError, match="line break"):
        sign(SECRET, "POST", PATH, BODY, "http://a:1\nPOST", NOW)
    headers = headers_at(**{"X-Catga-Sender": "http://a:1\nx"})
    with pytest.raises(PeerAuthError, match="line break"):
        verify(SECRET, "POST", PATH, BODY, headers, NOW, WINDOW)


def test_an_empty_secret_is_refused_when_signing() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        sign("", "POST", PATH, BODY, SENDER, NOW)


def test_replay_guard_refuses_a_signature_seen_inside_the_window() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check("ab" * 32, NOW, NOW)
    guard.check("cd" * 32, NOW, NOW)
    with pytest.raises(PeerAuthError, match="replayed request"):
        guard.check("AB" * 32, NOW, NOW + 5)


def test_replay_guard_forgets_signatures_once_their_window_has_passed() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check("ab" * 32, NOW, NOW)
    guard.check("cd" * 32, NOW + 20, NOW + 20)
    guard.check("ef" * 32, NOW + WINDOW + 1, NOW + WINDOW + 1)  # prunes the first
    assert len(guard) == 2
    guard.check("ab" * 32, NOW, NOW + WINDOW + 1)  # forgotten; verify() would refuse it anyway


def test_replay_guard_stays_bounded() -> None:
    guard = ReplayGuard(WINDOW, max_entries=10)
    for k in range(50):
        guard.check(f"{k:064x}", NOW, NOW)
    assert len(guard) == 10
