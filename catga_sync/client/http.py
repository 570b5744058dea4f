"""How a :class:`~catga_sync.client.ClusterClient` reaches the cluster: one kept-alive
``requests.Session`` shared by its threads, the leader first when it is known, another member
when one fails, every request within a deadline.

A request goes to the leader the nodes last named (each answer of a client route names it in
``X-Catga-Leader``), else to the members in turn. A connection that fails, or a ``503`` the
wire marks retryable (no leader, not the leader, a commit timeout, a node that is not running),
moves it to the next member, with a short pause after each round, until the deadline; any other
answer is final and raised as its typed error. Nothing here retries what could apply twice: a
command carries its (client, seq), so sending it again is safe.
"""

from __future__ import annotations

import itertools
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .._version import __version__
from ..config_values import normalize_or_reason
from ..errors import (
    CatgaError,
    ClientAuthError,
    CommitTimeoutError,
    ConfigError,
    ForwardingError,
    InvalidLockRequestError,
    LeaderUnreachableError,
    LockNotAcquiredError,
    LockNotHeldError,
    NoLeaderError,
    NotLeaderError,
    NotRegisteredError,
    RequestBodyError,
    UnknownCommandError,
)
from ..transport.client_wire import HEADER_LEADER, RETRYABLE_ERRORS
from ..transport.forward_client import _maybe_delivered

__all__ = ["CONNECT_TIMEOUT", "ClientTransport", "Reply", "TlsOption"]

TlsOption = ssl.SSLContext | str | bool | None
"""``tls=``: an SSLContext (its CAs alone), the path of a CA file, True or None (requests' CA
bundle: certifi's, or ``REQUESTS_CA_BUNDLE``), False (no check)."""

CONNECT_TIMEOUT = 2.0
"""Seconds a connection to one member may take before the next member is tried."""
MIN_SHARE = 0.5
"""Seconds one member is given at the least, when the time is shared between members; a round
after a pause starts only with this much left."""
_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
"""Pauses after each round over every member, the last repeated."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A 200 answer: the member that gave it, and its JSON body."""

    endpoint: str
    body: dict[str, Any]


class _ContextAdapter(HTTPAdapter):
    """Connections that verify with the given SSLContext (``requests`` takes only files)."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: object, cert: object) -> None:
        # requests' own version sets ca_certs to certifi's bundle when verify is True, and
        # urllib3 then loads it into the context: the caller's context would trust every CA
        # of certifi's besides its own. The context alone decides (it is not changed here).
        if url.lower().startswith("https"):
            conn.cert_reqs = self._context.verify_mode  # urllib3 sets it back on the context
            conn.ca_certs = None
            conn.ca_cert_dir = None


class ClientTransport:
    """Requests to the members of one cluster (see the module docstring). Thread-safe."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        secret: str | None,
        tls: TlsOption,
        headers: Mapping[str, str] | None,
        url_prefix: str,
    ) -> None:
        given = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.endpoints: list[str] = []
        for endpoint in given:
            try:
                normalized = normalize_or_reason(endpoint)
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"ClusterClient: {endpoint!r} is not a node's endpoint ({exc}); write "
                    "http://host:port, as in the nodes' Members"
                ) from None
            if normalized not in self.endpoints:
                self.endpoints.append(normalized)
        if not self.endpoints:
            raise ConfigError("ClusterClient needs at least one node endpoint")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ConfigError("ClusterClient(secret=...) is the nodes' ClientToken: a string")
        self.url_prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
        self._session = requests.Session()
        adapter = (
            _ContextAdapter(tls, pool_maxsize=32)
            if isinstance(tls, ssl.SSLContext)
            else HTTPAdapter(pool_maxsize=32)
        )
        self._session.mount("http://", HTTPAdapter(pool_maxsize=32))
        self._session.mount("https://", adapter)
        self._headers = {"User-Agent": f"catga-sync-client/{__version__}", **(headers or {})}
        if secret:
            self._headers["Authorization"] = f"Bearer {secret}"
        # Per request, not on the session: REQUESTS_CA_BUNDLE would override a session's.
        self._verify: bool | str = tls if isinstance(tls, (str, bool)) else True
        self._leader: str | None = None
        self.follow_leader = True
        """False: ask the given endpoints only, never the leader a node names (a worker's
        link to the worker that hosts its node)."""
        self._start = itertools.count()
        self.closed = threading.Event()

    # -- the leader hint -----------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        """The leader's endpoint as the nodes last named it (None: unknown)."""
        return self._leader

    def note_leader(self, leader: object) -> None:
        """Follow a node's leader hint, when it names one of the configured endpoints: the
        bearer token never goes to an address only a node named (None: no leader known)."""
        if not self.follow_leader:
            return
        if leader is None or leader == "":
            self._leader = None
        elif isinstance(leader, str):
            known = self.known(leader)
            if known is not None:
                self._leader = known

    def known(self, endpoint: object) -> str | None:
        """``endpoint`` normalized, when it is one of the configured endpoints; else None."""
        try:
            normalized = normalize_or_reason(endpoint)
        except (ValueError, TypeError):
            return None
        return normalized if normalized in self.endpoints else None

    def candidates(self) -> Iterator[str]:
        """The members to try, in order: the leader when known, then the others, starting
        from another one each time (so that a dead member is not always asked first)."""
        leader = self._leader
        endpoints = list(self.endpoints)  # a snapshot: retarget() may replace them meanwhile
        if leader is not None:
            yield leader
        count = len(endpoints)
        first = next(self._start) % count
        for k in range(count):
            endpoint = endpoints[(first + k) % count]
            if endpoint != leader:
                yield endpoint

    # -- requests ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        endpoint: str | None = None,
        fit: Callable[[dict[str, Any], float], dict[str, Any]] | None = None,
        share: bool = True,
        delivered: list[bool] | None = None,
    ) -> Reply:
        """Send until a member answers 200 or the (monotonic) ``deadline``; raise the typed
        error of a final answer, or of the last failure at the deadline.

        - ``endpoint``: ask that member only, once.
        - ``fit(body, remaining)``: the body to send with ``remaining`` seconds left (a node's
          own timeout, which ends before this client's).
        - ``share``: give one member at most half the time left, so that a member that took
          the connection and never answers (paused) leaves time for another; off for a
          request that waits by design (a lock's queue, a long poll).
        - ``delivered``: gets a True appended once a request may have run on a node (its
          outcome may exist though no answer came)."""
        last: Exception | None = None
        final = False
        for pause in itertools.chain(_PAUSES, itertools.repeat(_PAUSES[-1])):
            for target in [endpoint] if endpoint is not None else self.candidates():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    break
                if share:  # a paused member must leave time to ask another
                    remaining = max(min(remaining, MIN_SHARE), remaining / 2)
                try:
                    sent = body if fit is None or body is None else fit(body, remaining)
                    return self._once(target, method, path, sent, params, remaining, delivered)
                except _Retry as retry:
                    last = retry.error
            remaining = deadline - time.monotonic()
            if final or remaining < MIN_SHARE or self.closed.is_set() or endpoint is not None:
                # One member asked: the caller chooses the next. Or no time for another round
                # with its share: a member given a sliver of the time left times out before it
                # can answer, and that timeout would hide the answers before it (a refusal, a
                # TLS failure) and, maybe delivered, make a command nobody ran an unknown outcome.
                break
            if remaining - pause <= MIN_SHARE:  # the last round: the pause leaves it its share
                final, pause = True, remaining - MIN_SHARE
            self.closed.wait(pause)
        if self.closed.is_set() and last is None:
            last = LeaderUnreachableError("the ClusterClient was closed", maybe_delivered=False)
        raise last or LeaderUnreachableError(
            "no time was left to ask a node", maybe_delivered=False
        )

    def _once(
        self,
        target: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        params: dict[str, Any] | None,
        remaining: float,
        delivered: list[bool] | None,
    ) -> Reply:
        try:
            response = self._session.request(
                method,
                f"{target}{self.url_prefix}{path}",
                json=body,
                params=params,
                headers=self._headers,
                timeout=(min(CONNECT_TIMEOUT, remaining), remaining),
                verify=self._verify,
            )
        except requests.RequestException as exc:
            if delivered is not None and _maybe_delivered(exc):
                delivered.append(True)
            if target == self._leader:
                self._leader = None  # ask the others who leads now
            raise _Retry(
                LeaderUnreachableError(
                    f"node {target} could not be reached ({type(exc).__name__}: {exc})",
                    maybe_delivered=_maybe_delivered(exc),
                )
            ) from None
        if response.status_code != 401:  # a refused token learns nothing to go on with
            self.note_leader(response.headers.get(HEADER_LEADER))
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        if delivered is not None and _may_have_run(response.status_code, answer):
            delivered.append(True)
        if response.status_code == 200:
            return Reply(target, answer)
        code = str(answer.get("error") or "")
        message = str(answer.get("message") or f"{target} answered {response.status_code}")
        if response.status_code == 503 and code in RETRYABLE_ERRORS:
            if code != "commit_timeout":
                self.note_leader(answer.get("leader"))
            raise _Retry(_retryable_error(target, code, message, answer))
        if response.status_code in (502, 503, 504):  # a proxy in front of a node, say
            raise _Retry(LeaderUnreachableError(f"{target}: {message}", maybe_delivered=True))
        raise error_of(target, response.status_code, code, message)

    def retarget(self, endpoint: str, headers: Mapping[str, str]) -> None:
        """Ask ``endpoint`` from now on, with ``headers`` added (a worker's link, when another
        sibling hosts the node): leases and sessions made through this transport carry on."""
        self.endpoints = [endpoint]
        self._headers = {**self._headers, **headers}
        self._leader = None

    def close(self) -> None:
        self.closed.set()
        self._session.close()


class _Retry(Exception):
    """This member could not answer now: try another (``error`` is raised at the deadline)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _may_have_run(status: int, answer: dict[str, Any]) -> bool:
    """Whether an answer leaves open that the request ran: not a refusal before anything was
    proposed (4xx), nor a node that had no leader to send it to."""
    if status < 500:
        return status == 200
    return answer.get("error") not in ("no_leader", "not_leader")


def _retryable_error(target: str, code: str, message: str, answer: dict[str, Any]) -> Exception:
    leader = answer.get("leader") if isinstance(answer.get("leader"), str) else None
    if code == "no_leader":
        return NoLeaderError(message=f"{target}: {message}")
    if code == "not_leader":
        return NotLeaderError(None, leader, f"{target}: {message}")
    if code == "commit_timeout":
        request_id = answer.get("request_id")
        return CommitTimeoutError(
            f"{target}: {message}", request_id if isinstance(request_id, str) else None
        )
    return LeaderUnreachableError(f"{target}: {message}", maybe_delivered=True)


def error_of(target: str, status: int, code: str, message: str) -> CatgaError:
    """The typed error of a final (not retryable) answer of a client route."""
    if status == 401:
        return ClientAuthError(f"{target} refused the request: {message}")
    if code == "lock_not_acquired":
        return LockNotAcquiredError(message)
    if code == "lock_not_held":
        return LockNotHeldError(message)
    if code == "invalid_lock_request":
        return InvalidLockRequestError(message)
    if code == "unknown_machine":
        return NotRegisteredError(message)
    if code in ("unknown_query", "unknown_command"):
        return UnknownCommandError(message)
    if status in (400, 413, 415):
        return RequestBodyError(status, code or "bad_request", message)
    return ForwardingError(f"{target} failed the request ({status} {code}): {message}")
