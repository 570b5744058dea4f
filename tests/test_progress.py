"""Leader-side flow control per follower (Progress), and validation of RaftConfig tunables."""

from __future__ import annotations

from typing import Any

import pytest

from catga_sync.errors import ConfigError
from catga_sync.raft.config import RaftConfig
from catga_sync.raft.messages import Membership
from catga_sync.raft.progress import Progress, ProgressState


def probing(next_index: int = 6, match: int = 0, max_inflight: int = 3) -> Progress:
    progress = Progress(next_index, max_inflight)
    progress.match = match
    return progress


def replicating(match: int = 5, max_inflight: int = 3) -> Progress:
    progress = Progress(match + 1, max_inflight)
    progress.match = match
    progress.become_replicate()
    return progress


# --------------------------------------------------------------------------------------------
# PROBE


def test_new_progress_probes_and_is_not_paused() -> None:
    progress = Progress(11, 4)
    assert progress.state is ProgressState.PROBE
    assert (progress.match, progress.next) == (0, 11)
    assert not progress.is_paused()


def test_probe_pauses_after_one_send() -> None:
    progress = probing()
    progress.sent_entries(8)
    assert progress.is_paused()
    assert progress.next == 6  # probing does not move next optimistically
    assert not progress.inflight


def test_probe_unpauses_when_an_acknowledgement_teaches_something_new() -> None:
    progress = probing(match=3)
    progress.sent_entries(8)
    assert progress.maybe_update(8)
    assert not progress.is_paused()
    assert (progress.match, progress.next) == (8, 9)


def test_probe_stays_paused_on_a_stale_acknowledgement() -> None:
    progress = probing(match=5)
    progress.sent_entries(8)
    assert not progress.maybe_update(4)
    assert progress.is_paused()
    assert progress.match == 5


def test_probe_rejection_of_the_probe_moves_next_back_and_unpauses() -> None:
    progress = probing(next_index=10, match=2)
    progress.sent_entries(9)
    assert progress.maybe_decrease_to(9, 6)
    assert progress.next == 7  # hint_index + 1
    assert not progress.is_paused()


def test_probe_rejection_without_a_useful_hint_steps_back_by_one() -> None:
    progress = probing(next_index=10, match=2)
    assert progress.maybe_decrease_to(9, 100)
    assert progress.next == 9


def test_probe_ignores_stale_rejection_of_an_earlier_probe() -> None:
    progress = probing(next_index=10, match=2)
    progress.sent_entries(9)
    assert not progress.maybe_decrease_to(7, 3)  # we are probing at 9, not 7
    assert progress.next == 10
    assert progress.is_paused()


def test_probe_rejection_never_moves_next_below_match_plus_one() -> None:
    progress = probing(next_index=10, match=6)
    assert progress.maybe_decrease_to(9, 0)
    assert progress.next == 7


# --------------------------------------------------------------------------------------------
# REPLICATE


def test_become_replicate_starts_right_after_match() -> None:
    progress = probing(next_index=20, match=5)
    progress.sent_entries(19)
    progress.become_replicate()
    assert progress.state is ProgressState.REPLICATE
    assert progress.next == 6
    assert not progress.is_paused()


def test_replicate_sends_optimistically_and_pauses_when_inflight_is_full() -> None:
    progress = replicating(match=5, max_inflight=3)
    progress.sent_entries(7)
    progress.sent_entries(9)
    assert progress.next == 10
    assert not progress.is_paused()
    progress.sent_entries(12)
    assert list(progress.inflight) == [7, 9, 12]
    assert progress.is_paused()


def test_replicate_acknowledgement_frees_inflight_up_to_its_index() -> None:
    progress = replicating(match=5, max_inflight=3)
    for last in (7, 9, 12):
        progress.sent_entries(last)
    assert progress.maybe_update(9)
    assert list(progress.inflight) == [12]
    assert not progress.is_paused()
    assert progress.match == 9
    assert progress.next == 13  # an acknowledgement never moves next backwards
    assert progress.maybe_update(12)
    assert not progress.inflight


def test_replicate_acknowledgement_between_messages_frees_only_covered_ones() -> None:
    progress = replicating(match=5, max_inflight=2)
    progress.sent_entries(7)
    progress.sent_entries(9)
    progress.maybe_update(8)
    assert list(progress.inflight) == [9]


def test_maybe_update_reports_only_new_knowledge() -> None:
    progress = replicating(match=5)
    assert not progress.maybe_update(5)
    assert not progress.maybe_update(3)
    assert progress.match == 5
    assert progress.maybe_update(6)


def test_maybe_update_pulls_next_forward_past_the_acknowledged_index() -> None:
    progress = probing(next_index=3, match=0)
    progress.maybe_update(10)
    assert progress.next == 11


def test_replicate_ignores_stale_rejection_at_or_below_match() -> None:
    progress = replicating(match=5)
    progress.sent_entries(9)
    assert not progress.maybe_decrease_to(5, 0)
    assert not progress.maybe_decrease_to(3, 0)
    assert progress.next == 10
    assert list(progress.inflight) == [9]


def test_replicate_fresh_rejection_falls_back_to_match_plus_one() -> None:
    progress = replicating(match=5)
    progress.sent_entries(9)
    progress.sent_entries(12)
    assert progress.maybe_decrease_to(9, 0)
    assert progress.next == 6


def test_become_probe_from_replicate_restarts_after_match_and_clears_inflight() -> None:
    progress = replicating(match=5, max_inflight=1)
    progress.sent_entries(9)
    assert progress.is_paused()
    progress.become_probe()
    assert progress.state is ProgressState.PROBE
    assert progress.next == 6
    assert not progress.inflight
    assert not progress.is_paused()


# --------------------------------------------------------------------------------------------
# SNAPSHOT


def test_snapshot_state_is_always_paused_for_entries() -> None:
    progress = replicating(match=5)
    progress.sent_entries(9)
    progress.become_snapshot(100)
    assert progress.state is ProgressState.SNAPSHOT
    assert progress.pending_snapshot == 100
    assert progress.snapshot_offset == 0
    assert not progress.inflight
    assert progress.is_paused()


def test_become_probe_after_snapshot_starts_after_the_pending_snapshot() -> None:
    progress = probing(next_index=6, match=5)
    progress.become_snapshot(100)
    progress.become_probe()
    assert progress.state is ProgressState.PROBE
    assert progress.next == 101
    assert progress.pending_snapshot == 0


def test_become_probe_after_snapshot_uses_match_when_it_is_further() -> None:
    progress = probing(next_index=6, match=5)
    progress.become_snapshot(100)
    progress.maybe_update(150)
    progress.become_probe()
    assert progress.next == 151


def test_become_snapshot_resets_the_chunk_offset() -> None:
    progress = probing()
    progress.become_snapshot(10)
    progress.snapshot_offset = 4096
    progress.become_snapshot(20)
    assert (progress.pending_snapshot, progress.snapshot_offset) == (20, 0)


# --------------------------------------------------------------------------------------------
# Invariant across a scripted mix of events


def test_next_always_exceeds_match_through_a_sequence_of_events() -> None:
    progress = probing(next_index=10, match=0, max_inflight=2)
    script: list[tuple[str, int, int]] = [
        ("send", 12, 0),
        ("reject", 9, 4),
        ("ack", 5, 0),
        ("replicate", 0, 0),
        ("send", 8, 0),
        ("send", 11, 0),
        ("reject", 8, 2),
        ("probe", 0, 0),
        ("reject", 5, 0),
        ("ack", 6, 0),
        ("snapshot", 30, 0),
        ("probe", 0, 0),
    ]
    for action, a, b in script:
        if action == "send":
            progress.sent_entries(a)
        elif action == "reject":
            progress.maybe_decrease_to(a, b)
        elif action == "ack":
            progress.maybe_update(a)
        elif action == "replicate":
            progress.become_replicate()
        elif action == "probe":
            progress.become_probe()
        else:
            progress.become_snapshot(a)
        assert progress.next >= progress.match + 1, (action, progress)
    assert (progress.match, progress.next) == (6, 31)


# --------------------------------------------------------------------------------------------
# RaftConfig


def config(**overrides: Any) -> RaftConfig:
    kwargs: dict[str, Any] = {"node_id": "n1", "membership": Membership(frozenset({"n1"}))}
    kwargs.update(overrides)
    return RaftConfig(**kwargs)


def test_raft_config_defaults_are_valid() -> None:
    cfg = config()
    assert cfg.election_ticks > cfg.heartbeat_ticks >= 1
    assert cfg.pre_vote and cfg.check_quorum


@pytest.mark.parametrize(
    ("election_ticks", "heartbeat_ticks"), [(1, 1), (5, 5), (3, 5), (10, 0), (10, -1), (0, 0)]
)
def test_raft_config_election_ticks_must_exceed_heartbeat_ticks_of_at_least_one(
    election_ticks: int, heartbeat_ticks: int
) -> None:
    with pytest.raises(ConfigError, match="election_ticks"):
        config(election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks)


def test_raft_config_smallest_valid_timing_is_accepted() -> None:
    cfg = config(election_ticks=2, heartbeat_ticks=1)
    assert cfg.election_ticks == 2


@pytest.mark.parametrize(
    "name", ["max_entries_bytes", "max_inflight", "max_committed_bytes", "snapshot_chunk_bytes"]
)
@pytest.mark.parametrize("value", [0, -1])
def test_raft_config_sizes_must_be_positive(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=name):
        config(**{name: value})


def test_raft_config_applied_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="applied"):
        config(applied=-1)
    assert config(applied=0).applied == 0


@pytest.mark.parametrize("node_id", ["", None, 5, b"n1"])
def test_raft_config_node_id_must_be_a_non_empty_string(node_id: object) -> None:
    with pytest.raises(ConfigError, match="node_id"):
        config(node_id=node_id)


def test_config_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        config(max_inflight=0)
