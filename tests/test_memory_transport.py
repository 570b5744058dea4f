"""The in-memory network: delivery, partitions, and the same checks as the HTTP endpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from _peer_support import RecordingReceiver, append, heartbeat

from catga_sync.raft import AppendEntries, Entry, Heartbeat, Message
from catga_sync.transport import MemoryNetwork, MemoryTransport, Transport

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def network_of(*ids: str, **kwargs: bool) -> tuple[MemoryNetwork, dict[str, RecordingReceiver]]:
    network = MemoryNetwork(**kwargs)
    receivers = {raft_id: RecordingReceiver(raft_id) for raft_id in ids}
    for receiver in receivers.values():
        network.register(receiver)
    return network, receivers


def test_batches_are_delivered_per_recipient_with_the_sender_name() -> None:
    network, rx = network_of(A, B, C)
    transport: Transport = MemoryTransport(network, A, "node-a")
    transport.send([heartbeat(A, B), heartbeat(A, C), append(A, B, 1)])
    assert rx[B].batches == [([heartbeat(A, B), append(A, B, 1)], "node-a")]
    assert rx[C].batches == [([heartbeat(A, C)], "node-a")]
    assert network.delivered == 3 and network.dropped == 0


def test_partitions_cut_both_ways_until_healed() -> None:
    network, rx = network_of(A, B, C)
    ta, tb = MemoryTransport(network, A, "a"), MemoryTransport(network, B, "b")
    network.partition(A, B)
    ta.send([heartbeat(A, B), heartbeat(A, C)])
    tb.send([heartbeat(B, A)])
    assert rx[B].batches == [] and rx[A].batches == []
    assert rx[C].messages == [heartbeat(A, C)]
    network.heal()
    ta.send([heartbeat(A, B)])
    assert rx[B].messages == [heartbeat(A, B)]
    network.isolate(C)
    ta.send([heartbeat(A, C)])
    assert rx[C].messages == [heartbeat(A, C)]
    assert network.dropped == 3


def test_an_unregistered_node_gets_nothing_and_the_sender_does_not_fail() -> None:
    network, rx = network_of(A, B)
    network.unregister(B)
    network.unregister(B)
    MemoryTransport(network, A, "a").send([heartbeat(A, B)])
    assert rx[B].batches == [] and network.dropped == 1
    network.register(rx[B])
    network.register(rx[B])  # the same receiver again is fine
    with pytest.raises(ValueError, match="already registered"):
        network.register(RecordingReceiver(B))


def test_messages_travel_through_the_wire_format() -> None:
    network, rx = network_of(A, B)
    # An entry the codec refuses (a term above the message's) never reaches the receiver.
    bad = AppendEntries(1, A, B, 0, 0, (Entry(1, 5, b"x"),), 0)
    MemoryTransport(network, A, "a").send([heartbeat(A, B), bad])
    assert rx[B].batches == [] and network.dropped == 2
    raw, rx_raw = network_of(A, B, codec_roundtrip=False)
    MemoryTransport(raw, A, "a").send([bad])
    assert rx_raw[B].messages == [bad]


def test_a_node_cannot_send_messages_in_another_nodes_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    network, rx = network_of(A, B, C)
    with caplog.at_level(logging.WARNING, logger="catga_sync.transport.memory"):
        MemoryTransport(network, A, "a").send([heartbeat(C, B)])
    assert rx[B].batches == []
    assert "sender_mismatch" not in caplog.text and "claims to come from" in caplog.text


class FailingReceiver(RecordingReceiver):
    def receive(self, messages: Sequence[Message], sender_name: str | None) -> None:
        raise RuntimeError("node is stopping")


def test_a_failing_receiver_does_not_reach_the_sender() -> None:
    network = MemoryNetwork()
    network.register(FailingReceiver(B))
    MemoryTransport(network, A, "a").send([Heartbeat(1, A, B, 0)])
    assert network.dropped == 1


def test_close_makes_send_a_no_op() -> None:
    network, rx = network_of(A, B)
    transport = MemoryTransport(network, A, "a")
    transport.close()
    transport.close()
    transport.send([heartbeat(A, B)])
    assert rx[B].batches == [] and network.dropped == 0
