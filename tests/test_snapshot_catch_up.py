"""A follower 100,000 entries behind catches up through a snapshot (Raft §7), on the simulator.

The entries are real commands of the built-in key-value map, applied by the node's own
replicated state (:class:`~catga_sync.fsm.ReplicatedState`): what the follower restores is the
snapshot a node really takes, and after catching up its state equals the leader's byte for byte.
The simulator checks Raft's safety properties after every event along the way.
"""

from __future__ import annotations

from typing import Any

import pytest

from catga_sync.fsm import ReplicatedState, encode_command
from catga_sync.kv import ReplicatedDict
from catga_sync.raft import AppendEntries, InstallSnapshot, Message
from catga_sync.testing import SimulatedCluster, _Node

BEHIND = 100_000
BATCH = 1_000
KEYS = 997
"""Commands write this many keys over and over, so the state stays small while the log grows."""


def replicated_state() -> ReplicatedState:
    state = ReplicatedState()
    state.register(ReplicatedDict())
    return state


class CountingCluster(SimulatedCluster):
    """Counts the snapshot chunks and the entries sent to each node."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.snapshot_chunks: dict[str, int] = {}
        self.entries_sent: dict[str, int] = {}

    def _send(self, sender: _Node, message: Message) -> None:
        if isinstance(message, InstallSnapshot):
            self.snapshot_chunks[message.to] = self.snapshot_chunks.get(message.to, 0) + 1
        elif isinstance(message, AppendEntries):
            count = self.entries_sent.get(message.to, 0) + len(message.entries)
            self.entries_sent[message.to] = count
        super()._send(sender, message)


def commit_batches(cluster: SimulatedCluster, leader: str, start: int, count: int) -> None:
    """Commit ``count`` commands through ``leader`` in batches of BATCH (one Ready each)."""
    for first in range(start, start + count, BATCH):
        batch = [
            encode_command(
                "catga.kv",
                "set",
                [f"k{n % KEYS}", n],
                {},
                client=None,
                seq=None,
                ack=None,
                time=float(n),
            )
            for n in range(first, min(first + BATCH, start + count))
        ]
        last = cluster.core(leader).propose_many(batch)[-1]
        cluster.flush()
        cluster.run_until(
            lambda: cluster.core(leader).applied_index >= last.index,  # noqa: B023
            max_ticks=100,
        )


def test_a_follower_100k_entries_behind_catches_up_through_a_snapshot() -> None:
    # init: three nodes; one follower is cut off while the others commit 100,000 commands.
    cluster = CountingCluster(3, seed=4, state_machine=replicated_state)
    leader = cluster.wait_for_leader()
    lagging = next(n for n in cluster.nodes if n != leader)
    cluster.isolate(lagging)
    behind_from = cluster.core(lagging).log.last_index
    commit_batches(cluster, leader, 0, BEHIND)
    snapshot = cluster.compact(leader)
    # ...then a few more, so the follower needs the log after the snapshot too.
    commit_batches(cluster, leader, BEHIND, 500)
    target = cluster.core(leader).commit_index
    assert target - behind_from >= BEHIND
    assert cluster.core(leader).log.offset == snapshot.meta.index > behind_from + BEHIND - 1
    entries_before = cluster.entries_sent.get(lagging, 0)

    # act: the follower rejoins.
    cluster.heal()
    cluster.run_until(lambda: cluster.core(lagging).applied_index >= target, max_ticks=500)

    # check: it got the snapshot (not 100,000 entries), its log now starts at the snapshot,
    # and its state is the leader's.
    assert cluster.snapshot_chunks.get(lagging, 0) >= 1
    assert cluster.entries_sent.get(lagging, 0) - entries_before < BEHIND // 10
    follower_log = cluster.core(lagging).log
    assert follower_log.offset == snapshot.meta.index
    assert follower_log.last_index == cluster.core(leader).log.last_index
    leader_state = cluster.machine(leader)
    follower_state = cluster.machine(lagging)
    assert isinstance(leader_state, ReplicatedState)
    assert isinstance(follower_state, ReplicatedState)
    assert follower_state.snapshot() == leader_state.snapshot()
    assert follower_state.machines["catga.kv"].data == {  # type: ignore[attr-defined]
        f"k{n % KEYS}": n for n in range(BEHIND + 500)
    }
    cluster.check_converged()


def lagging_cluster(seed: int) -> tuple[CountingCluster, str, str, int, int]:
    """A cluster whose leader compacted 5,000 commands away while one follower was cut off:
    (cluster, leader, that follower, the leader's commit index, chunks its snapshot takes)."""
    cluster = CountingCluster(
        3, seed=seed, state_machine=replicated_state, snapshot_chunk_bytes=256
    )
    leader = cluster.wait_for_leader()
    lagging = next(n for n in cluster.nodes if n != leader)
    cluster.isolate(lagging)
    commit_batches(cluster, leader, 0, 5_000)
    snapshot = cluster.compact(leader)
    needed = -(-len(snapshot.data) // 256)
    assert needed > 20
    return cluster, leader, lagging, cluster.core(leader).commit_index, needed


@pytest.mark.parametrize("delay", [3, 6, 11])
def test_a_chunk_slower_to_answer_than_a_heartbeat_is_not_sent_again_on_every_heartbeat(
    delay: int,
) -> None:
    """Each heartbeat answer used to resend the chunk the follower awaited: with chunks that
    take longer than a heartbeat interval to be answered (a 94 MB snapshot over HTTP), copies
    piled up faster than they were answered and a new member never caught up. A chunk goes
    again only when an election timeout (10 ticks) passed without its answer, and a second
    answer to a chunk sent twice sends nothing more: so a chunk goes once per election
    timeout its round trip takes, at most."""
    cluster, leader, lagging, target, needed = lagging_cluster(seed=7)
    cluster.heal()
    for link in ((leader, lagging), (lagging, leader)):
        cluster.set_faults(delay=(delay, delay), link=link)
    cluster.run_until(lambda: cluster.core(lagging).applied_index >= target, max_ticks=50_000)
    copies = 1 + (2 * delay) // 10
    assert cluster.snapshot_chunks[lagging] <= needed * copies + 2
    cluster.check_converged()


def test_a_lost_chunk_or_answer_is_sent_again_after_an_election_timeout() -> None:
    cluster, leader, lagging, target, needed = lagging_cluster(seed=11)
    cluster.heal()
    for link in ((leader, lagging), (lagging, leader)):
        cluster.set_faults(drop=0.2, link=link)
    cluster.run_until(lambda: cluster.core(lagging).applied_index >= target, max_ticks=50_000)
    assert cluster.snapshot_chunks[lagging] > needed  # some went again, and it got there
    cluster.check_converged()
