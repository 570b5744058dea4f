"""Sending Raft messages to peers over HTTP: one queue per peer, and one thread and one
kept-alive connection per POST in flight to it (``pipeline_depth``, 1 by default).

A slow or dead peer only ever holds up its own sender threads, so the others keep getting their
messages on time. Each sender thread posts everything queued for its peer as one batch (split
only to stay under the body limit). With a depth above 1, the next batch leaves while the last
one is still being written to the peer's disk; each POST then carries its place in the stream
(``X-Catga-Stream``) and the receiver queues them in that order (:mod:`.arrival`).

The queues are bounded; when one overflows, stale heartbeats and other superseded messages go
first, then the oldest messages — Raft resends what matters, and a peer that cannot keep up
must not make its sender hoard memory. ``send`` never blocks on the network and never raises.

Each sender thread keeps one kept-alive connection to its peer (:mod:`.http11`). Not ``requests``:
every command crosses this path several times (entries out, acknowledgements back, the commit
out), and measured here a ``requests`` POST costs ~1.5 ms of CPU against ~0.6 ms for the same
POST through ``http.client``. Nothing of ``requests`` is needed on this path: no proxies, no
redirects, no cookies, one peer per connection. HTTPS peers are verified with the transport's
``ssl_context`` (the node's ``TlsCaFile`` and client certificate, :mod:`catga_sync.tls`), else
against the system's certificate store (``ssl.create_default_context()``).
"""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..config import MAX_PIPELINE_DEPTH
from ..errors import CatgaError, ConfigError
from ..raft import (
    Heartbeat,
    HeartbeatResponse,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .base import PeerReceiver
from .framed_route import FramedRoute
from .http11 import PeerConnection
from .signing import peer_post_headers, verify_reply
from .wire import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SIGNATURE_WINDOW,
    HEADER_REPLY,
    HEADER_SIGNATURE,
    HEADER_STREAM,
    INLINE_REPLY,
    RAFT_PATH,
    check_addressing,
    decode_batch,
    encode_batches,
    normalize_url_prefix,
)

logger = logging.getLogger(__name__)

RpcObserver = Callable[[str, float, bool], None]
"""Called after each POST with (peer, seconds taken, delivered?) — for latency metrics."""

_BACKOFF_FIRST = 0.01
"""Seconds to wait after the first failure to a peer; doubled per failure, capped at the timeout."""

_SUPERSEDABLE = (Heartbeat, HeartbeatResponse, VoteRequest, VoteResponse, TimeoutNow)


def drop_stale(messages: Iterable[Message]) -> list[Message]:
    """``messages`` without those a later message in the same queue makes pointless, in order.

    - a Heartbeat (or HeartbeatResponse) is stale once a later one follows, unless it carries a
      read-index context and the later one carries none: acknowledging a later context confirms
      the earlier reads too, a plain heartbeat does not;
    - a VoteRequest (or VoteResponse) is stale once a later one of the same kind (vote or
      pre-vote) for the same or a higher term follows;
    - a TimeoutNow is stale once a later TimeoutNow follows.

    Everything else (AppendEntries, snapshots, read requests and their answers) is kept.
    """
    items = list(messages)
    kept: list[Message] = []
    heartbeats: dict[type, tuple[bool, bool]] = {}  # kind -> (a later one, a later with context)
    votes: dict[tuple[type, bool], int] = {}  # (kind, pre_vote) -> highest later term
    timeout_now_later = False
    for message in reversed(items):
        if isinstance(message, (Heartbeat, HeartbeatResponse)):
            later_any, later_context = heartbeats.get(type(message), (False, False))
            if later_context or (later_any and not message.context):
                continue
            heartbeats[type(message)] = (True, later_context or bool(message.context))
        elif isinstance(message, (VoteRequest, VoteResponse)):
            key = (type(message), message.pre_vote)
            later_term = votes.get(key)
            if later_term is not None and later_term >= message.term:
                continue
            votes[key] = max(message.term, later_term or 0)
        elif isinstance(message, TimeoutNow):
            if timeout_now_later:
                continue
            timeout_now_later = True
        kept.append(message)
    kept.reverse()
    return kept


class SendQueue:
    """A bounded FIFO of messages for one peer, with the drop policy of :func:`drop_stale`.

    ``put`` never blocks: past ``limit`` it first drops stale messages, then the oldest.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"queue_limit must be at least 1, not {limit}")
        self.limit = limit
        self._items: deque[Message] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Supersedable messages put since the last compaction: with none, compacting again
        # cannot free anything, so a queue full of AppendEntries is not rescanned on every put.
        self._fresh_supersedable = 0

    def put(self, messages: Sequence[Message]) -> tuple[int, int]:
        """Queue ``messages``; returns (stale ones dropped, others evicted) to respect the limit."""
        with self._cond:
            if self._closed:
                return 0, 0
            self._items.extend(messages)
            self._fresh_supersedable += sum(isinstance(m, _SUPERSEDABLE) for m in messages)
            stale = evicted = 0
            if len(self._items) > self.limit:
                if self._fresh_supersedable:
                    before = len(self._items)
                    self._items = deque(drop_stale(self._items))
                    stale = before - len(self._items)
                    self._fresh_supersedable = 0
                while len(self._items) > self.limit:
                    self._items.popleft()
                    evicted += 1
            self._cond.notify()
            return stale, evicted

    def take_all(self, timeout: float | None = None) -> list[Message]:
        """Everything queued, oldest first; waits for something (or close, or ``timeout``)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._fresh_supersedable = 0
            return items

    def close(self) -> int:
        """Refuse further messages and wake the taker; returns how many were discarded."""
        with self._cond:
            self._closed = True
            discarded = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return discarded

    def snapshot(self) -> tuple[Message, ...]:
        """What is queued now, oldest first (for diagnostics and tests)."""
        with self._cond:
            return tuple(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class _PeerSender:
    """One peer's queue, its ``pipeline_depth`` sender threads (each with its own kept-alive
    connection, so that many POSTs are in flight at once), and its counters."""

    def __init__(self, owner: HttpTransport, peer: str) -> None:
        self.owner = owner
        self.peer = peer
        self.url = f"{peer.rstrip('/')}{owner.url_prefix}{RAFT_PATH}"
        parts = urlsplit(self.url)
        self.path = parts.path
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.queue = SendQueue(owner.queue_limit)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.take_lock = threading.Lock()
        """Held from taking a batch to numbering its bodies: the numbers follow the queue."""
        # A stream id per sender's life: the receiver orders requests within it
        # (:mod:`.arrival`); a restarted sender starts a new stream at 1.
        self.stream = secrets.token_hex(6) if owner.pipeline_depth > 1 else None
        self.next_seq = 1
        self.sent = self.failed = self.batches = self.failed_batches = 0
        self.stale = self.evicted = 0
        self.in_flight = 0
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.last_latency = 0.0
        self.warned_oversized = False
        self.frames = FramedRoute(
            peer, self.path, enabled=owner.frames, opening_headers=self._opening_headers
        )
        """Whether this peer takes frames (:mod:`.framed_route`), and each batch sent so."""
        self.connections = [self._new_connection() for _ in range(owner.pipeline_depth)]
        self.threads = [
            threading.Thread(
                target=self._run,
                args=(connection,),
                name=f"catga-send {peer}" + (f" #{k + 1}" if k else ""),
                daemon=True,
            )
            for k, connection in enumerate(self.connections)
        ]

    def _new_connection(self) -> PeerConnection:
        owner = self.owner
        return PeerConnection(
            self.host,
            self.port,
            https=self.https,
            timeout=owner.timeout,
            ssl_context=owner.ssl_context,
        )

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def enqueue(self, messages: Sequence[Message]) -> None:
        stale, evicted = self.queue.put(messages)
        if stale or evicted:
            with self.lock:
                self.stale += stale
                self.evicted += evicted

    def stop(self) -> None:
        self.stopping.set()
        self.queue.close()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "sent": self.sent,
                "failed": self.failed,
                "dropped": self.stale + self.evicted,
                "stale_dropped": self.stale,
                "evicted": self.evicted,
                "queued": len(self.queue),
                "in_flight": self.in_flight,
                "batches": self.batches,
                "failed_batches": self.failed_batches,
                "reachable": self.reachable,
                "last_error": self.last_error,
                "last_latency": self.last_latency,
                "frames": self.frames.state,
            }

    # ----------------------------------------------------------------------------------------
    # The sender threads

    def _run(self, connection: PeerConnection) -> None:
        failures = 0
        try:
            while not self.stopping.is_set():
                bodies = self._take()
                if not bodies or self.stopping.is_set():
                    continue
                try:
                    ok = self._deliver(connection, bodies)
                except Exception:  # a bug must not silence this peer for good
                    logger.exception("Sending to peer %s failed unexpectedly", self.peer)
                    ok = False
                if ok:
                    failures = 0
                    continue
                failures += 1
                # Back off so a dead peer does not spin a CPU; what queues meanwhile goes out
                # in the next batch (or is dropped by the queue's policy).
                backoff = _BACKOFF_FIRST * 2 ** min(failures - 1, 20)
                self.stopping.wait(min(self.owner.timeout, backoff))
        finally:
            connection.close()

    def _take(self) -> list[tuple[bytes, int, str | None]]:
        """Everything queued, as bodies under the size limit: (body, messages, stream header).

        One thread at a time waits for the queue; the others wait for it (they would only
        split what it takes)."""
        with self.take_lock:
            batch = self.queue.take_all()
            if not batch:
                return []
            bodies = encode_batches(batch, self.owner.max_batch_bytes)
            if self.stream is None:
                return [(body, count, None) for body, count in bodies]
            first, self.next_seq = self.next_seq, self.next_seq + len(bodies)
        return [
            (body, count, f"{self.stream}:{first + k}") for k, (body, count) in enumerate(bodies)
        ]

    def _deliver(
        self, connection: PeerConnection, bodies: list[tuple[bytes, int, str | None]]
    ) -> bool:
        with self.lock:
            self.in_flight += 1
        try:
            for k, (body, count, place) in enumerate(bodies):
                if self.stopping.is_set():
                    return True
                if len(body) > self.owner.max_batch_bytes:
                    self._oversized(len(body), count)
                    continue
                if not self._post(connection, body, count, place):
                    rest = sum(n for _, n, _ in bodies[k + 1 :])
                    with self.lock:
                        self.failed += rest
                    return False
            return True
        finally:
            with self.lock:
                self.in_flight -= 1

    def _post(self, connection: PeerConnection, body: bytes, count: int, place: str | None) -> bool:
        owner = self.owner
        headers = peer_post_headers(
            owner.secret, self.path, body, owner.sender_id, owner.sender_name, time.time()
        )
        if place is not None:
            headers[HEADER_STREAM] = place
        error: str | None = None
        rejected = False
        replies_to = owner.reply_receiver
        if replies_to is not None:
            headers[HEADER_REPLY] = INLINE_REPLY
        started = time.monotonic()
        try:
            status, answer, reply_headers = self.frames.request(connection, body, headers)
            if status == 200 and replies_to is not None:
                self._take_replies(replies_to, answer, headers, reply_headers)
            elif status != 202:
                rejected = 400 <= status < 500
                error = _describe_refusal(status, answer)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out...
            connection.close()
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
        with self.lock:
            self.last_latency = elapsed
            if error is None:
                self.sent += count
                self.batches += 1
            else:
                self.failed += count
                self.failed_batches += 1
                self.last_error = error
            was_reachable = self.reachable
            self.reachable = error is None
        self._log_transition(was_reachable, error, rejected)
        owner.observe(self.peer, elapsed, error is None)
        return error is None

    def _take_replies(
        self,
        receiver: PeerReceiver,
        answer: bytes,
        request_headers: dict[str, str],
        reply_headers: dict[str, str],
    ) -> None:
        """Hand the messages the peer answered inline to our node, once checked like a request
        of its own: signed (with a secret), well formed, from that peer and to us."""
        owner = self.owner
        try:
            if owner.secret is not None:
                verify_reply(
                    owner.secret,
                    self.path,
                    request_headers.get(HEADER_SIGNATURE, ""),
                    answer,
                    reply_headers,
                    time.time(),
                    DEFAULT_SIGNATURE_WINDOW,
                )
            messages = decode_batch(answer)
            check_addressing(messages, sender=self.peer, receiver=owner.sender_id)
        except CatgaError as exc:
            with self.lock:
                self.last_error = f"bad inline reply: {exc}"
            logger.warning("Dropped an inline reply from peer %s: %s", self.peer, exc)
            return
        if messages:
            receiver.receive(messages, None)

    def _opening_headers(self) -> dict[str, str]:
        owner = self.owner
        return peer_post_headers(
            owner.secret, self.path, b"", owner.sender_id, owner.sender_name, time.time()
        )

    def _oversized(self, size: int, count: int) -> None:
        error = (
            f"a message of {size} bytes exceeds the {self.owner.max_batch_bytes}-byte body limit "
            "and was dropped; raise max_message_bytes on every node"
        )
        with self.lock:
            self.failed += count
            self.last_error = error
            first = not self.warned_oversized
            self.warned_oversized = True
        logger.log(logging.WARNING if first else logging.DEBUG, "Peer %s: %s", self.peer, error)

    def _log_transition(
        self, was_reachable: bool | None, error: str | None, rejected: bool
    ) -> None:
        if error is None:
            if was_reachable is False:
                logger.info("Peer %s is reachable again", self.peer)
            return
        logger.debug("Sending to peer %s failed: %s", self.peer, error)
        if was_reachable is not False:
            # A refusal (4xx) is a configuration problem (secret, members, limits), not an outage.
            level = logging.WARNING if rejected else logging.INFO
            logger.log(level, "Peer %s is unreachable: %s", self.peer, error)


def _describe_refusal(status: int, answer: bytes) -> str:
    detail = ""
    try:
        payload = json.loads(answer)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "error" in payload:
        detail = f": {payload.get('error')}: {payload.get('message', '')}"
    return f"HTTP {status}{detail}"


class HttpTransport:
    """The :class:`~catga_sync.transport.base.Transport` over HTTP: signed JSON batches,
    ``pipeline_depth`` sender threads per peer (1: one POST in flight at a time). Peers are
    addressed by their Raft ids, which are their endpoints.

    ``timeout`` bounds both connecting and reading one POST (derive it from the election
    timeout: a reply later than that is useless to Raft). ``max_batch_bytes`` should equal the
    receivers' body limit. With ``frames``, a peer whose answers offer frames gets every batch
    as a frame on one open POST instead of a POST each (:mod:`.frames`).
    """

    def __init__(
        self,
        *,
        sender_id: str,
        sender_name: str,
        peers: Iterable[str],
        secret: str | None,
        url_prefix: str,
        timeout: float,
        queue_limit: int = 1024,
        max_batch_bytes: int = DEFAULT_MAX_BODY_BYTES,
        rpc_observer: RpcObserver | None = None,
        reply_receiver: PeerReceiver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        pipeline_depth: int = 1,
        frames: bool = True,
    ) -> None:
        if not sender_id:
            raise ConfigError("sender_id must be this node's Raft id (its normalized endpoint)")
        if not sender_name or not sender_name.isascii() or not sender_name.isprintable():
            raise ConfigError(
                f"sender_name {sender_name!r} must be printable ASCII (it travels in a header)"
            )
        if not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout}")
        if queue_limit < 1:
            raise ConfigError(f"queue_limit must be at least 1, not {queue_limit}")
        if max_batch_bytes < 1:
            raise ConfigError(f"max_batch_bytes must be at least 1, not {max_batch_bytes}")
        if not 1 <= pipeline_depth <= MAX_PIPELINE_DEPTH:
            raise ConfigError(
                f"pipeline_depth must be from 1 to {MAX_PIPELINE_DEPTH}, not {pipeline_depth}"
            )
        self.sender_id = sender_id
        self.sender_name = sender_name
        self.secret = secret or None
        self.url_prefix = normalize_url_prefix(url_prefix)
        self.timeout = float(timeout)
        self.queue_limit = queue_limit
        self.max_batch_bytes = max_batch_bytes
        self.pipeline_depth = pipeline_depth
        """POSTs in flight to one peer at most, each on its own connection and thread."""
        self.frames = frames
        """Take a peer's offer of frames (:mod:`.frames`): many exchanges per POST."""
        self._observer = rpc_observer
        self.reply_receiver = reply_receiver
        self.ssl_context = ssl_context
        """Verifies https peers and presents our certificate; None: the system's store."""
        """Where messages peers answer inline go (our node); None: ask for no inline replies."""
        self._senders: dict[str, _PeerSender] = {}
        self._retired: list[_PeerSender] = []
        self._unroutable: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        for peer in peers:
            self.add_peer(peer)

    # ----------------------------------------------------------------------------------------
    # The Transport port

    def send(self, messages: Sequence[Message]) -> None:
        """Queue each message for its recipient's sender thread; returns at once, never raises."""
        if self._closed or not messages:
            return
        by_peer: dict[str, list[Message]] = {}
        for message in messages:
            by_peer.setdefault(message.to, []).append(message)
        for peer, batch in by_peer.items():
            sender = self._senders.get(peer) or self._route_unknown(peer)
            if sender is not None:
                sender.enqueue(batch)

    def close(self) -> None:
        """Stop every sender thread (waiting up to about the timeout) and close the sessions.

        Messages still queued are discarded; sending afterwards does nothing. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            senders = [*self._senders.values(), *self._retired]
            self._retired.clear()
        for sender in senders:
            sender.stop()
        deadline = time.monotonic() + self.timeout + 1.0
        for sender in senders:
            sender.join(max(0.0, deadline - time.monotonic()))
            if sender.is_alive():
                logger.debug(
                    "Sender to %s still busy after close(); it exits on its own", sender.peer
                )

    # ----------------------------------------------------------------------------------------
    # Membership

    def add_peer(self, peer: str) -> None:
        """Start sending to ``peer`` (a Raft id, i.e. an endpoint URL). Idempotent."""
        _check_endpoint(peer)
        with self._lock:
            if self._closed or peer in self._senders or peer == self.sender_id:
                return
            sender = _PeerSender(self, peer)
            self._senders[peer] = sender
            sender.start()

    def remove_peer(self, peer: str) -> None:
        """Stop sending to ``peer``, discarding what is queued for it. Returns at once."""
        with self._lock:
            sender = self._senders.pop(peer, None)
            if sender is None:
                return
            self._retired = [s for s in self._retired if s.is_alive()]
            self._retired.append(sender)
        sender.stop()

    def set_peers(self, peers: Iterable[str]) -> None:
        """Send to exactly ``peers`` from now on (after a membership change)."""
        wanted = {p for p in peers if p != self.sender_id}
        with self._lock:
            current = set(self._senders)
        for peer in wanted - current:
            self.add_peer(peer)
        for peer in current - wanted:
            self.remove_peer(peer)

    @property
    def peers(self) -> frozenset[str]:
        """The peers this transport sends to now."""
        with self._lock:
            return frozenset(self._senders)

    # ----------------------------------------------------------------------------------------
    # Observation

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per peer: ``sent``, ``failed`` and ``dropped`` message counts (``dropped`` is
        ``stale_dropped`` + ``evicted``), ``queued``, ``batches``, ``failed_batches``,
        ``reachable`` (None before the first attempt), ``last_error`` and ``last_latency``
        (seconds of the last POST)."""
        with self._lock:
            senders = sorted(self._senders.items())
        return {peer: sender.stats() for peer, sender in senders}

    def pending(self, peer: str) -> tuple[Message, ...]:
        """The messages queued for ``peer`` right now, oldest first (for diagnostics)."""
        sender = self._senders.get(peer)
        return sender.queue.snapshot() if sender is not None else ()

    def observe(self, peer: str, seconds: float, ok: bool) -> None:
        if self._observer is None:
            return
        try:
            self._observer(peer, seconds, ok)
        except Exception:
            logger.exception("The RPC observer failed; ignoring it")

    def _route_unknown(self, peer: str) -> _PeerSender | None:
        # The core may address a node before the membership change reaches set_peers (a new
        # configuration takes effect when appended); its id is its endpoint, so go ahead.
        if peer == self.sender_id:
            return None
        try:
            self.add_peer(peer)
        except ConfigError as exc:
            if peer not in self._unroutable:
                self._unroutable.add(peer)
                logger.warning("Dropping messages to %r: %s", peer, exc)
            return None
        return self._senders.get(peer)


def _check_endpoint(peer: str) -> None:
    parts = urlsplit(peer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"peer {peer!r} is not an endpoint URL; peers are addressed as http://host:port"
        )
