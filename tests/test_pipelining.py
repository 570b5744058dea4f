"""Pipelined replication: several POSTs in flight to one peer, queued there in the order sent.

The ordering is :mod:`catga_sync.transport.arrival`'s; the senders are the HTTP transport's
with ``pipeline_depth`` > 1; the last test runs a real cluster over HTTP with it.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from _peer_support import InlineReceiver, RecordingReceiver, append, peer_app, serve
from helpers import LocalCluster

from catga_sync.errors import ConfigError
from catga_sync.kv import ReplicatedDict
from catga_sync.raft import Message
from catga_sync.transport.arrival import ArrivalOrder, parse_stream
from catga_sync.transport.http import HttpTransport
from catga_sync.transport.wire import (
    HEADER_SENDER,
    HEADER_STREAM,
    RAFT_PATH,
    encode_batch,
)

A = "http://127.0.0.1:1"
WAIT = 10.0


def transport(peer: str, depth: int, **options: Any) -> HttpTransport:
    return HttpTransport(
        sender_id=A,
        sender_name="node-a",
        peers=[peer],
        secret=None,
        url_prefix="/_catga",
        timeout=5.0,
        pipeline_depth=depth,
        **options,
    )


# ---------------------------------------------------------------------------------------------
# The arrival order, on its own


@pytest.mark.parametrize(
    ("header", "place"),
    [
        ("a1b2:7", ("a1b2", 7)),
        ("with:colons:3", ("with:colons", 3)),
        (None, None),
        ("", None),
        ("nocolon", None),
        (":5", None),
        ("abc:", None),
        ("abc:-1", None),
        ("abc:1e3", None),
        ("abc:" + "9" * 19, None),
    ],
)
def test_a_stream_header_is_parsed_or_ignored(header: str | None, place: object) -> None:
    assert parse_stream(header) == place


def test_a_request_waits_until_the_one_sent_before_it_is_queued() -> None:
    order = ArrivalOrder()
    first, second = order.turn("peer", "s:1"), order.turn("peer", "s:2")
    waited = threading.Event()
    result: list[bool] = []

    def late() -> None:
        result.append(second.wait(WAIT))
        waited.set()

    thread = threading.Thread(target=late)
    thread.start()
    assert not waited.wait(0.2), "the second request went ahead of the first"
    assert first.wait(WAIT)
    first.release()
    assert waited.wait(WAIT)
    thread.join()
    assert result == [True]
    assert (order.waits, order.timeouts) == (1, 0)


def test_a_lost_predecessor_costs_one_wait_and_is_skipped_for_good() -> None:
    order = ArrivalOrder()
    with order.turn("peer", "s:1") as turn:
        assert turn.wait(WAIT)
    # 2 never arrives: 3 waits, gives up, and goes ahead; 4 then waits for nothing.
    started = time.monotonic()
    third = order.turn("peer", "s:3")
    assert third.wait(0.05) is False
    assert time.monotonic() - started >= 0.05
    third.release()
    assert order.turn("peer", "s:4").wait(0) is True
    # 2, arriving late after all, is not held back either.
    assert order.turn("peer", "s:2").wait(0) is True
    assert (order.waits, order.timeouts) == (1, 1)


def test_streams_of_different_senders_and_unordered_requests_do_not_wait() -> None:
    order = ArrivalOrder()
    assert order.turn("peer-a", "s:1").wait(0)
    assert order.turn("peer-b", "s:1").wait(0)  # another sender: its own stream
    assert order.turn("peer-a", "t:1").wait(0)  # the sender restarted: a new stream
    assert order.turn("peer-a", None).wait(0)  # a depth-1 sender sends no header
    assert order.turn("peer-a", "garbage").wait(0)
    assert order.waits == 0


def test_released_turns_ahead_of_the_gap_move_the_stream_past_them() -> None:
    order = ArrivalOrder()
    one, two, three = (order.turn("p", f"s:{n}") for n in (1, 2, 3))
    # 3 went ahead (say its wait ran out) and was queued before 1 and 2 were.
    three.release()
    assert one.wait(0)
    one.release()
    assert two.wait(0)
    two.release()
    assert order.turn("p", "s:4").wait(0), "4 must not wait for 3, already queued"


# ---------------------------------------------------------------------------------------------
# Through the peer blueprint


def post(port: int, body: bytes, stream: str | None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    headers = {"Content-Type": "application/json", HEADER_SENDER: A}
    if stream is not None:
        headers[HEADER_STREAM] = stream
    try:
        connection.request("POST", "/_catga" + RAFT_PATH, body, headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize("ordered", [True, False])
def test_the_blueprint_queues_a_stream_in_order_and_only_with_the_header(ordered: bool) -> None:
    """Request 2 arrives first. With stream headers it waits for 1; without, it goes first:
    the same requests show the ordering is the header's doing, not luck."""
    receiver = RecordingReceiver("placeholder")
    with serve(peer_app(lambda: receiver, secret=None, arrival_wait=WAIT)) as server:
        me = f"http://127.0.0.1:{server.port}"
        receiver._raft_id = me
        statuses: list[int] = []
        second = threading.Thread(
            target=lambda: statuses.append(
                post(server.port, encode_batch([append(A, me, 2)]), "s:2" if ordered else None)
            )
        )
        second.start()
        if not ordered:
            assert receiver.wait_for(1, WAIT)
        else:
            time.sleep(0.2)
            assert receiver.messages == [], "request 2 was queued before request 1"
        statuses.append(
            post(server.port, encode_batch([append(A, me, 1)]), "s:1" if ordered else None)
        )
        second.join(WAIT)
        assert receiver.wait_for(2, WAIT)
    assert statuses == [202, 202]
    indexes = [m.prev_index + 1 for m in receiver.messages]  # type: ignore[attr-defined]
    assert indexes == ([1, 2] if ordered else [2, 1])


# ---------------------------------------------------------------------------------------------
# The sender


class SlowDisk(InlineReceiver):
    """Answers inline, as a node does, and holds its first answer as a slow fsync would: the
    request stays in flight after its messages are queued."""

    def __init__(self) -> None:
        super().__init__("placeholder")
        self.entered, self.release = threading.Event(), threading.Event()

    def answer(self, messages: Sequence[Message]) -> list[Message]:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(WAIT)
        return []


@pytest.mark.parametrize("depth", [1, 2])
def test_a_slow_post_holds_the_next_batch_only_without_a_deeper_pipeline(depth: int) -> None:
    receiver = SlowDisk()
    with serve(peer_app(lambda: receiver, secret=None, arrival_wait=WAIT)) as server:
        me = receiver._raft_id = f"http://127.0.0.1:{server.port}"
        sender = transport(me, depth, reply_receiver=RecordingReceiver(A))
        try:
            sender.send([append(A, me, 1)])
            assert receiver.entered.wait(WAIT)
            sender.send([append(A, me, 2)])
            arrived = receiver.wait_for(2, 0.5 if depth == 1 else WAIT)
            assert arrived is (depth > 1), "the second batch waited for the first answer"
        finally:
            receiver.release.set()
            assert receiver.wait_for(2, WAIT)
            sender.close()
    assert [m.prev_index + 1 for m in receiver.messages] == [1, 2]  # type: ignore[attr-defined]


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("depth", [2, 4])
def test_many_batches_in_flight_arrive_complete_and_in_order(depth: int) -> None:
    receiver = RecordingReceiver("placeholder")
    original = receiver.receive
    jitter = random.Random(depth)

    def uneven(messages: Sequence[Message], sender_name: str | None) -> None:
        time.sleep(jitter.random() * 0.003)  # server threads race each other
        original(messages, sender_name)

    receiver.receive = uneven  # type: ignore[method-assign]
    with serve(peer_app(lambda: receiver, secret=None, arrival_wait=WAIT)) as server:
        me = receiver._raft_id = f"http://127.0.0.1:{server.port}"
        sender = transport(me, depth)
        sent = [append(A, me, i) for i in range(1, 301)]
        try:
            for k in range(0, 300, 3):
                sender.send(sent[k : k + 3])
                time.sleep(0.0005)
            assert receiver.wait_for(300, WAIT)
            # The receiver has them before the sender has counted the last answer.
            assert wait_until(lambda: sender.stats()[me]["sent"] == 300)
            stats = sender.stats()[me]
        finally:
            sender.close()
    assert receiver.messages == sent
    assert (stats["failed"], stats["dropped"], stats["in_flight"]) == (0, 0, 0)


@pytest.mark.parametrize("depth", [0, 17, -1])
def test_a_pipeline_depth_out_of_range_is_refused(depth: int) -> None:
    with pytest.raises(ConfigError, match="pipeline_depth"):
        transport("http://127.0.0.1:2", depth)


# ---------------------------------------------------------------------------------------------
# A cluster


def test_a_cluster_with_a_deep_pipeline_commits_everything_everywhere(tmp_path: Path) -> None:
    cluster = LocalCluster(
        3,
        storage="sqlite",
        transport="http",
        tmp_path=tmp_path,
        config={"pipeline_depth": 3},
        setup=lambda node: node.register(ReplicatedDict()),
        committed_leader=True,
        wait=WAIT,
    ).start()
    try:
        leader = cluster.leader(unique=False)
        kv = leader.state(ReplicatedDict)

        def writer(t: int) -> None:
            for i in range(40):
                kv.set(f"k{t}-{i}", i)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        last_set = leader.read_barrier(timeout=WAIT)
        for node in cluster.nodes:
            node.wait_for(lambda s: s.last_applied >= last_set, WAIT)
            assert node.state(ReplicatedDict).local.size() == 240
        # The setting reached the transports: three senders (and connections) per peer.
        ours = [f"catga-send {e} #3" for e in cluster.endpoints]
        names = [t.name for t in threading.enumerate()]
        assert sum(names.count(name) for name in ours) == 6
    finally:
        cluster.stop()
