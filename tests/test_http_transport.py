"""The HTTP transport: its queue policy, and end to end against real peer servers on loopback."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from _peer_support import (
    RecordingReceiver,
    append,
    blackhole,
    heartbeat,
    heartbeat_response,
    peer_app,
    serve,
    unused_port,
)

from catga_sync.errors import ConfigError
from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    Message,
    ReadIndexRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from catga_sync.transport.http import HttpTransport, SendQueue, drop_stale
from catga_sync.transport.wire import decode_batch, encode_batches

A = "http://127.0.0.1:1"
B = "http://127.0.0.1:2"
SECRET = "transport test secret"


def sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("catga-send ")]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(sender_threads())
    yield
    leaked = [t for t in sender_threads() if t not in before and t.is_alive()]
    assert leaked == [], "a test left sender threads running; close() the transport"


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The transport's log records (the test servers log every request too)."""
    return [r for r in caplog.records if r.name == "catga_sync.transport.http"]


def make_transport(me: str, peers: Sequence[str], **kwargs: Any) -> HttpTransport:
    options: dict[str, Any] = {
        "sender_id": me,
        "sender_name": "node-" + me.rsplit(":", 1)[1],
        "peers": peers,
        "secret": SECRET,
        "url_prefix": "/_catga",
        "timeout": 5.0,
    }
    options.update(kwargs)
    return HttpTransport(**options)


# ---------------------------------------------------------------------------------------------
# The drop policy, on its own


def test_older_heartbeats_are_stale_once_a_newer_one_follows() -> None:
    queue = [heartbeat(A, B, commit=1), append(A, B, 1), heartbeat(A, B, commit=2)]
    assert drop_stale(queue) == [append(A, B, 1), heartbeat(A, B, commit=2)]


def test_heartbeat_responses_are_deduplicated_separately_from_heartbeats() -> None:
    queue = [heartbeat_response(A, B), heartbeat(A, B), heartbeat_response(A, B, term=2)]
    assert drop_stale(queue) == [heartbeat(A, B), heartbeat_response(A, B, term=2)]


def test_a_read_context_is_kept_until_a_later_context_confirms_it() -> None:
    with_context = heartbeat(A, B, context="read-1")
    # A later plain heartbeat does not confirm the read: both stay.
    assert drop_stale([with_context, heartbeat(A, B)]) == [with_context, heartbeat(A, B)]
    # A later read context confirms earlier reads too (the leader releases all earlier ones).
    later = heartbeat(A, B, context="read-2")
    assert drop_stale([with_context, heartbeat(A, B), later]) == [later]


def test_superseded_votes_and_transfers_are_stale() -> None:
    queue: list[Message] = [
        VoteRequest(2, A, B, 5, 1, pre_vote=True),
        VoteRequest(2, A, B, 5, 1, pre_vote=False),
        VoteRequest(3, A, B, 5, 1, pre_vote=True),
        VoteResponse(2, A, B, granted=True),
        VoteResponse(3, A, B, granted=False),
        TimeoutNow(3, A, B),
        TimeoutNow(3, A, B),
    ]
    assert drop_stale(queue) == [
        VoteRequest(2, A, B, 5, 1, pre_vote=False),
        VoteRequest(3, A, B, 5, 1, pre_vote=True),
        VoteResponse(3, A, B, granted=False),
        TimeoutNow(3, A, B),
    ]


def test_replication_and_reads_are_never_stale() -> None:
    queue: list[Message] = [
        append(A, B, 1),
        append(A, B, 1),
        AppendResponse(1, A, B, 1),
        AppendResponse(1, A, B, 2),
        ReadIndexRequest(1, A, B, "r1"),
        ReadIndexRequest(1, A, B, "r2"),
    ]
    assert drop_stale(queue) == queue


def test_an_overflowing_queue_drops_heartbeats_before_other_messages() -> None:
    queue = SendQueue(limit=5)
    appends = [append(A, B, i) for i in range(1, 4)]
    assert queue.put([heartbeat(A, B, commit=0), appends[0], heartbeat(A, B, commit=1)]) == (0, 0)
    assert queue.put([appends[1], heartbeat(A, B, commit=2)]) == (0, 0)
    # Six messages for five places: the two older heartbeats go, every append stays.
    assert queue.put([appends[2]]) == (2, 0)
    assert queue.snapshot() == (appends[0], appends[1], heartbeat(A, B, commit=2), appends[2])


def test_when_nothing_is_stale_the_oldest_messages_are_evicted() -> None:
    queue = SendQueue(limit=3)
    appends = [append(A, B, i) for i in range(1, 6)]
    assert queue.put(appends[:3]) == (0, 0)
    assert queue.put(appends[3:]) == (0, 2)
    assert queue.snapshot() == tuple(appends[2:])


def test_heartbeats_arriving_at_a_full_queue_of_appends_replace_each_other() -> None:
    queue = SendQueue(limit=4)
    appends = [append(A, B, i) for i in range(1, 4)]
    queue.put([*appends, heartbeat(A, B, commit=1)])
    assert queue.put([heartbeat(A, B, commit=2)]) == (1, 0)
    assert queue.snapshot() == (*appends, heartbeat(A, B, commit=2))


def test_take_all_empties_the_queue_and_close_discards() -> None:
    queue = SendQueue(limit=10)
    queue.put([heartbeat(A, B), append(A, B, 1)])
    assert queue.take_all() == [heartbeat(A, B), append(A, B, 1)]
    assert len(queue) == 0
    assert queue.take_all(timeout=0.01) == []
    queue.put([append(A, B, 2)])
    assert queue.close() == 1
    assert queue.put([append(A, B, 3)]) == (0, 0)
    assert queue.take_all() == []  # closed: returns at once


def test_take_all_wakes_up_when_messages_arrive() -> None:
    queue = SendQueue(limit=10)
    got: list[list[Message]] = []
    taker = threading.Thread(target=lambda: got.append(queue.take_all(timeout=10)))
    taker.start()
    queue.put([heartbeat(A, B)])
    taker.join(10)
    assert got == [[heartbeat(A, B)]]


def test_batches_are_split_to_stay_under_the_body_limit() -> None:
    messages = [append(A, B, i, b"z" * 200) for i in range(1, 30)]
    bodies = encode_batches(messages, 1500)
    assert len(bodies) > 1
    assert all(len(body) <= 1500 for body, _ in bodies)
    decoded = [m for body, count in bodies for m in decode_batch(body)]
    assert decoded == messages
    assert sum(count for _, count in bodies) == len(messages)


# ---------------------------------------------------------------------------------------------
# End to end over real sockets


class Node:
    """A recording receiver served by the peer blueprint on a real port."""

    def __init__(self, server: Any, receiver: RecordingReceiver) -> None:
        self.server = server
        self.receiver = receiver
        self.endpoint = receiver.raft_id


@pytest.fixture
def start_node() -> Iterator[Any]:
    contexts: list[Any] = []

    def start(*, secret: str | None = SECRET, max_body_bytes: int = 1 << 20) -> Node:
        holder: list[RecordingReceiver] = []
        app = peer_app(
            lambda: holder[0] if holder else None, secret=secret, max_body_bytes=max_body_bytes
        )
        context = serve(app)
        server = context.__enter__()
        contexts.append(context)
        holder.append(RecordingReceiver(f"http://127.0.0.1:{server.port}"))
        return Node(server, holder[0])

    yield start
    for context in contexts:
        context.__exit__(None, None, None)


def test_two_nodes_exchange_signed_batches(start_node: Any) -> None:
    a, b = start_node(), start_node()
    ta = make_transport(a.endpoint, [b.endpoint])
    tb = make_transport(b.endpoint, [a.endpoint])
    try:
        to_b = [heartbeat(a.endpoint, b.endpoint), append(a.endpoint, b.endpoint, 1)]
        ta.send(to_b)
        assert b.receiver.wait_for(2)
        tb.send([AppendResponse(1, b.endpoint, a.endpoint, 1)])
        assert a.receiver.wait_for(1)
    finally:
        ta.close()
        tb.close()
    assert b.receiver.messages == to_b
    assert b.receiver.batches[0][1] == ta.sender_name
    assert a.receiver.messages == [AppendResponse(1, b.endpoint, a.endpoint, 1)]
    stats = ta.stats()[b.endpoint]
    assert (stats["sent"], stats["failed"], stats["dropped"], stats["queued"]) == (2, 0, 0, 0)
    assert stats["reachable"] is True and stats["last_error"] is None
    assert stats["last_latency"] > 0


def test_a_wrong_secret_is_reported_and_delivers_nothing(
    start_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    b = start_node()
    observed: list[tuple[str, float, bool]] = []
    done = threading.Event()

    def observer(peer: str, seconds: float, ok: bool) -> None:
        observed.append((peer, seconds, ok))
        done.set()

    ta = make_transport(A, [b.endpoint], secret="not the cluster's", rpc_observer=observer)
    try:
        with caplog.at_level(logging.INFO, logger="catga_sync.transport.http"):
            ta.send([heartbeat(A, b.endpoint)])
            assert done.wait(10)
    finally:
        ta.close()
    stats = ta.stats()[b.endpoint]
    assert stats["sent"] == 0 and stats["failed"] == 1 and stats["reachable"] is False
    assert stats["last_error"].startswith("HTTP 401: unauthorized: bad signature")
    assert observed[0][0] == b.endpoint and observed[0][2] is False
    warnings = [r.getMessage() for r in ours(caplog) if r.levelno == logging.WARNING]
    assert any("is unreachable: HTTP 401" in w for w in warnings)
    assert b.receiver.batches == []


def test_an_unsigned_transport_talks_to_an_open_node(start_node: Any) -> None:
    b = start_node(secret=None)
    ta = make_transport(A, [b.endpoint], secret=None)
    try:
        ta.send([heartbeat(A, b.endpoint)])
        assert b.receiver.wait_for(1)
    finally:
        ta.close()


def test_a_dead_peer_does_not_delay_the_live_one(start_node: Any) -> None:
    live = start_node()
    refused = f"http://127.0.0.1:{unused_port()}"
    transports: list[HttpTransport] = []
    with contextlib.ExitStack() as stack:
        # Unwound in reverse: the black hole closes first (resetting the connection its peer's
        # sender waits on), then the transport, which therefore need not wait.
        stack.callback(lambda: [t.close() for t in transports])
        stuck = f"http://127.0.0.1:{stack.enter_context(blackhole())}"
        refused_tried = threading.Event()

        def observer(peer: str, _seconds: float, ok: bool) -> None:
            if peer == refused and not ok:
                refused_tried.set()

        # A long timeout keeps the stuck peer's first POST waiting for the whole test.
        transport = make_transport(
            A, [live.endpoint, refused, stuck], queue_limit=32, timeout=60.0, rpc_observer=observer
        )
        transports.append(transport)
        for i in range(200):
            # Every tenth message to the dead peers is an append, the rest are heartbeats.
            to_dead = [
                append(A, peer, i + 1) if i % 10 == 0 else heartbeat(A, peer, commit=i)
                for peer in (refused, stuck)
            ]
            transport.send([heartbeat(A, live.endpoint, commit=i), *to_dead])
            # Each message reaches the live peer before the next is sent, while the stuck
            # peer's sender still waits for its first reply.
            assert live.receiver.wait_for(i + 1), f"message {i} to the live peer is late"
        pending = transport.pending(stuck)
        stuck_queued = transport.stats()[stuck]["queued"]
        assert refused_tried.wait(10), "the refused peer was never tried"
    stats = transport.stats()  # after close(): every sender has finished counting

    assert [m.commit for m in live.receiver.messages if isinstance(m, Heartbeat)] == list(
        range(200)
    )
    assert stats[live.endpoint]["sent"] == 200 and stats[live.endpoint]["dropped"] == 0
    assert stats[stuck]["sent"] == 0
    assert stats[stuck]["dropped"] > 0
    assert stats[stuck]["evicted"] == 0  # only stale heartbeats were dropped
    assert stuck_queued == len(pending) and stuck_queued <= 32
    # Every append not in flight waits in the queue, next to the newest heartbeat.
    waiting = [m.prev_index + 1 for m in pending if isinstance(m, AppendEntries)]
    assert waiting and waiting == list(range(1, 200, 10))[-len(waiting) :]
    assert [m for m in pending if isinstance(m, Heartbeat)][-1] == heartbeat(A, stuck, commit=199)
    # Tried (the observer saw its POST fail) and refused: known unreachable, not unknown (None).
    assert stats[refused]["sent"] == 0 and stats[refused]["failed"] > 0
    assert stats[refused]["reachable"] is False


def test_a_peer_coming_back_is_noticed(start_node: Any, caplog: pytest.LogCaptureFixture) -> None:
    port = unused_port()
    peer = f"http://127.0.0.1:{port}"
    failed = threading.Event()
    delivered = threading.Event()

    def observer(_peer: str, _seconds: float, ok: bool) -> None:
        (delivered if ok else failed).set()

    transport = make_transport(A, [peer], timeout=0.5, rpc_observer=observer)
    receiver = RecordingReceiver(peer)
    try:
        with caplog.at_level(logging.INFO, logger="catga_sync.transport.http"):
            transport.send([heartbeat(A, peer)])
            assert failed.wait(10)
            assert transport.stats()[peer]["reachable"] is False
            with serve(peer_app(lambda: receiver, secret=SECRET), port=port):
                # Raft resends on its own; here the test does, until one gets through.
                for k in range(200):
                    transport.send([heartbeat(A, peer, commit=k)])
                    if delivered.wait(0.05):
                        break
                assert delivered.is_set()
    finally:
        transport.close()
    infos = [r.getMessage() for r in ours(caplog) if r.levelno == logging.INFO]
    assert infos[0].startswith(f"Peer {peer} is unreachable")
    assert infos[-1] == f"Peer {peer} is reachable again"
    assert sum("is unreachable" in m for m in infos) == 1
    assert receiver.messages


def test_messages_queued_during_a_slow_post_leave_as_one_batch(start_node: Any) -> None:
    b = start_node()
    entered, release = threading.Event(), threading.Event()
    original = b.receiver.receive

    def slow_receive(messages: Sequence[Message], sender_name: str | None) -> None:
        original(messages, sender_name)
        entered.set()
        release.wait(10)

    b.receiver.receive = slow_receive  # type: ignore[method-assign]
    transport = make_transport(A, [b.endpoint])
    try:
        transport.send([heartbeat(A, b.endpoint)])
        assert entered.wait(10)  # the first POST is in flight
        for i in range(1, 51):
            transport.send([append(A, b.endpoint, i)])
        release.set()
        assert b.receiver.wait_for(51)
    finally:
        release.set()
        transport.close()
    assert [len(batch) for batch, _ in b.receiver.batches] == [1, 50]
    assert transport.stats()[b.endpoint]["batches"] == 2


def test_large_batches_are_split_below_the_receivers_limit(start_node: Any) -> None:
    b = start_node(max_body_bytes=3000)
    transport = make_transport(A, [b.endpoint], max_batch_bytes=3000)
    entries = [append(A, b.endpoint, i, b"q" * 300) for i in range(1, 41)]
    try:
        transport.send(entries)
        assert b.receiver.wait_for(40)
    finally:
        transport.close()
    assert b.receiver.messages == entries
    assert len(b.receiver.batches) > 1
    assert transport.stats()[b.endpoint]["failed"] == 0


def test_a_message_larger_than_the_limit_is_dropped_with_a_reason(start_node: Any) -> None:
    b = start_node()
    transport = make_transport(A, [b.endpoint], max_batch_bytes=500)
    try:
        transport.send([append(A, b.endpoint, 1, b"w" * 1000), heartbeat(A, b.endpoint)])
        assert b.receiver.wait_for(1)
    finally:
        transport.close()
    assert b.receiver.messages == [heartbeat(A, b.endpoint)]
    stats = transport.stats()[b.endpoint]
    assert stats["failed"] == 1 and "exceeds the 500-byte body limit" in stats["last_error"]


# ---------------------------------------------------------------------------------------------
# Lifecycle and membership


def test_close_is_idempotent_stops_threads_and_later_sends_do_nothing() -> None:
    peers = [f"http://127.0.0.1:{unused_port()}" for _ in range(3)]
    transport = make_transport(A, peers, timeout=0.5)
    assert len(sender_threads()) >= 3
    transport.send([heartbeat(A, p) for p in peers])
    transport.close()
    transport.close()
    assert [t for t in sender_threads() if t.name.split(" ", 1)[1] in peers] == []
    transport.send([heartbeat(A, peers[0])])  # a no-op, not an error
    transport.add_peer("http://127.0.0.1:9")
    assert transport.peers == frozenset(peers)
    assert all(s["queued"] == 0 for s in transport.stats().values())


def test_close_does_not_wait_for_a_peer_that_never_answers() -> None:
    with blackhole() as port:
        peer = f"http://127.0.0.1:{port}"
        transport = make_transport(A, [peer], timeout=0.3)
        transport.send([heartbeat(A, peer)])
        transport.close()  # waits at most about the timeout for the POST in flight
    assert not any(t.name == f"catga-send {peer}" for t in sender_threads())


def test_membership_changes_start_and_stop_senders(start_node: Any) -> None:
    b, c = start_node(), start_node()
    transport = make_transport(A, [b.endpoint])
    try:
        transport.add_peer(b.endpoint)  # idempotent
        transport.add_peer(A)  # never to itself
        assert transport.peers == {b.endpoint}
        transport.set_peers([c.endpoint, A])
        assert transport.peers == {c.endpoint}
        transport.send([heartbeat(A, c.endpoint)])
        assert c.receiver.wait_for(1)
        transport.remove_peer(c.endpoint)
        transport.remove_peer(c.endpoint)  # idempotent
        assert transport.peers == frozenset()
        # A message to a node the transport was not told about yet is routed by its endpoint.
        transport.send([heartbeat(A, b.endpoint)])
        assert b.receiver.wait_for(1)
        assert transport.peers == {b.endpoint}
    finally:
        transport.close()


def test_messages_to_itself_or_to_non_endpoints_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = make_transport(A, [])
    try:
        with caplog.at_level(logging.WARNING, logger="catga_sync.transport.http"):
            transport.send([heartbeat(B, A), heartbeat(A, A)])
            transport.send([heartbeat(A, "node7"), heartbeat(A, "node7")])
            transport.send([heartbeat(A, "node7")])
        assert transport.peers == frozenset()
    finally:
        transport.close()
    warnings = [r.getMessage() for r in ours(caplog)]
    assert len(warnings) == 1 and "'node7'" in warnings[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": 0}, "timeout"),
        ({"queue_limit": 0}, "queue_limit"),
        ({"max_batch_bytes": 0}, "max_batch_bytes"),
        ({"sender_name": "nœud"}, "ASCII"),
        ({"sender_name": ""}, "ASCII"),
        ({"sender_id": ""}, "sender_id"),
        ({"peers": ["node1"]}, "not an endpoint URL"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    peers = kwargs.pop("peers", [])
    with pytest.raises(ConfigError, match=match):
        make_transport(A, peers, **kwargs)


def test_a_failing_observer_does_not_stop_the_sender(start_node: Any) -> None:
    b = start_node()

    def observer(peer: str, seconds: float, ok: bool) -> None:
        raise RuntimeError("metrics are broken")

    transport = make_transport(A, [b.endpoint], rpc_observer=observer)
    try:
        transport.send([heartbeat(A, b.endpoint, commit=1)])
        assert b.receiver.wait_for(1)
        transport.send([heartbeat(A, b.endpoint, commit=2)])
        assert b.receiver.wait_for(2)
    finally:
        transport.close()
