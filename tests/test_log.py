"""RaftLog: the core's in-memory log, checked against the rules of the Raft paper (§5.3, §5.4)."""

from __future__ import annotations

import json

import pytest

from catga_sync.raft.codec import encode_config_entry, entry_to_dict
from catga_sync.raft.log import LogInvariantError, RaftLog
from catga_sync.raft.messages import (
    ConfigChange,
    ConfigChangeType,
    Entry,
    EntryType,
    Membership,
    Snapshot,
    SnapshotMeta,
)

MEMBERSHIP = Membership(frozenset({"n1", "n2", "n3"}))


def entries(*terms: int, start: int = 1) -> list[Entry]:
    """Consecutive NORMAL entries from ``start``, one per term given."""
    return [Entry(start + k, term, f"{start + k}".encode()) for k, term in enumerate(terms)]


def config_entry(index: int, term: int, node: str = "n4") -> Entry:
    data = encode_config_entry(
        ConfigChange(ConfigChangeType.ADD_VOTER, node), Membership(frozenset({"n1", node}))
    )
    return Entry(index, term, data, EntryType.CONFIG)


def snapshot(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, MEMBERSHIP), b"state")


def log_of(*terms: int, commit: int = 0) -> RaftLog:
    return RaftLog(None, entries(*terms), commit)


def terms_of(log: RaftLog) -> list[int]:
    return [e.term for e in log.entries]


# --------------------------------------------------------------------------------------------
# Construction


def test_empty_log_starts_at_zero() -> None:
    log = RaftLog(None, [], 0)
    assert (log.offset, log.first_index, log.last_index, log.last_term) == (0, 1, 0, 0)
    assert log.term(0) == 0
    assert log.committed == log.applied == log.stable == 0
    assert log.unstable_entries() == ()


def test_restarted_log_treats_stored_entries_as_stable() -> None:
    log = RaftLog(snapshot(5, 2), entries(2, 3, start=6), commit=6)
    assert (log.offset, log.first_index, log.last_index, log.last_term) == (5, 6, 7, 3)
    assert log.committed == 6
    assert log.applied == 5
    assert log.stable == 7
    assert log.unstable_entries() == ()


def test_restart_commit_below_snapshot_is_raised_to_the_snapshot() -> None:
    log = RaftLog(snapshot(5, 2), entries(2, start=6), commit=3)
    assert log.committed == 5


@pytest.mark.parametrize(
    ("snap", "stored"),
    [
        (None, [Entry(1, 1), Entry(3, 1)]),
        (None, [Entry(2, 1)]),
        (None, [Entry(1, 1), Entry(1, 1)]),
        (snapshot(5, 1), [Entry(5, 1)]),
        (snapshot(5, 1), [Entry(7, 1)]),
    ],
    ids=["gap", "not-from-1", "duplicate", "overlaps-snapshot", "gap-after-snapshot"],
)
def test_stored_log_that_is_not_consecutive_is_refused(
    snap: Snapshot | None, stored: list[Entry]
) -> None:
    with pytest.raises(ValueError, match="not consecutive"):
        RaftLog(snap, stored, 0)


@pytest.mark.parametrize(
    ("snap", "stored", "commit"),
    [(None, [], 1), (None, entries(1, 1), 3), (snapshot(5, 1), entries(1, start=6), 7)],
)
def test_stored_commit_beyond_last_entry_is_refused(
    snap: Snapshot | None, stored: list[Entry], commit: int
) -> None:
    with pytest.raises(ValueError, match="beyond the last stored entry"):
        RaftLog(snap, stored, commit)


# --------------------------------------------------------------------------------------------
# term()


def test_term_at_the_snapshot_offset_is_the_snapshot_term() -> None:
    log = RaftLog(snapshot(10, 4), entries(5, 5, start=11), 0)
    assert log.term(10) == 4


def test_term_inside_the_log_is_the_entry_term() -> None:
    log = RaftLog(snapshot(10, 4), entries(5, 6, start=11), 0)
    assert log.term(11) == 5
    assert log.term(12) == 6
    assert log.match_term(12, 6)
    assert not log.match_term(12, 5)


@pytest.mark.parametrize("index", [0, 5, 9, 13, 100])
def test_term_outside_the_log_is_unknown(index: int) -> None:
    log = RaftLog(snapshot(10, 4), entries(5, 6, start=11), 0)
    assert log.term(index) is None
    assert not log.match_term(index, 4)


# --------------------------------------------------------------------------------------------
# maybe_append: the AppendEntries receiver (§5.3)


def test_section_5_3_mismatched_prev_term_is_rejected_and_log_untouched() -> None:
    log = log_of(1, 1, 2)
    assert log.maybe_append(3, 1, 3, entries(3, start=4)) is None
    assert terms_of(log) == [1, 1, 2]
    assert log.committed == 0


def test_section_5_3_prev_index_beyond_our_log_is_rejected() -> None:
    log = log_of(1, 1)
    assert log.maybe_append(5, 1, 0, entries(1, start=6)) is None
    assert log.last_index == 2


def test_section_5_3_new_entries_are_appended_after_a_match() -> None:
    log = log_of(1, 1)
    assert log.maybe_append(2, 1, 0, entries(2, 2, start=3)) == 4
    assert terms_of(log) == [1, 1, 2, 2]
    assert log.truncations == 0


def test_section_5_3_conflicting_suffix_is_replaced() -> None:
    log = log_of(1, 1, 2, 2, 2)
    assert log.maybe_append(2, 1, 0, entries(3, start=3)) == 3
    assert terms_of(log) == [1, 1, 3]
    assert log.truncations == 1


def test_section_5_3_conflict_in_the_middle_of_the_batch_keeps_the_matching_prefix() -> None:
    log = log_of(1, 1, 2, 2)
    new = [Entry(2, 1, b"2"), Entry(3, 2, b"3"), Entry(4, 3, b"new"), Entry(5, 3, b"5")]
    assert log.maybe_append(1, 1, 0, new) == 5
    assert terms_of(log) == [1, 1, 2, 3, 3]
    assert log.entry(3).data == b"3"
    assert log.entry(4).data == b"new"


def test_section_5_3_matching_entries_are_not_truncated_by_an_old_shorter_append() -> None:
    log = log_of(1, 1, 1, 1, 1)
    # A delayed AppendEntries carrying only entries 2..3 arrives after 4..5 were appended.
    assert log.maybe_append(1, 1, 0, entries(1, 1, start=2)) == 3
    assert log.last_index == 5
    assert log.truncations == 0
    assert log.stable == 5


def test_section_5_3_heartbeat_shaped_append_changes_nothing_but_commit() -> None:
    log = log_of(1, 1, 2)
    assert log.maybe_append(3, 2, 2, []) == 3
    assert terms_of(log) == [1, 1, 2]
    assert log.committed == 2


def test_section_5_3_commit_is_limited_to_the_last_new_index() -> None:
    log = log_of(1, 1, 1, 1, 1)
    # The leader has committed 5, but this message only vouches for entries up to 2.
    assert log.maybe_append(1, 1, 5, entries(1, start=2)) == 2
    assert log.committed == 2


def test_section_5_3_empty_append_commit_is_limited_to_prev_index() -> None:
    log = log_of(1, 1, 1, 1, 1)
    assert log.maybe_append(2, 1, 10, []) == 2
    assert log.committed == 2


def test_section_5_3_commit_never_moves_backwards() -> None:
    log = log_of(1, 1, 1, 1, commit=3)
    assert log.maybe_append(1, 1, 1, entries(1, start=2)) == 2
    assert log.committed == 3


def test_section_5_3_conflict_at_or_below_commit_is_a_log_invariant_error() -> None:
    log = log_of(1, 1, 1, commit=2)
    with pytest.raises(LogInvariantError, match="committed"):
        log.maybe_append(1, 1, 0, entries(2, start=2))
    assert terms_of(log) == [1, 1, 1]


def test_truncation_moves_stable_back_so_new_entries_are_persisted() -> None:
    log = log_of(1, 1, 1, 1)
    assert log.stable == 4
    log.maybe_append(2, 1, 0, entries(2, start=3))
    assert log.stable == 2
    assert log.unstable_entries() == tuple(entries(2, start=3))


# --------------------------------------------------------------------------------------------
# append


def test_append_refuses_to_truncate_committed_entries() -> None:
    log = log_of(1, 1, 1, commit=2)
    with pytest.raises(LogInvariantError):
        log.append(entries(2, start=2))
    with pytest.raises(LogInvariantError):
        log.append(entries(2, start=1))
    assert terms_of(log) == [1, 1, 1]


def test_append_refuses_a_gap() -> None:
    log = log_of(1, 1)
    with pytest.raises(LogInvariantError, match="gap"):
        log.append(entries(1, start=4))
    assert log.last_index == 2


def test_append_of_nothing_is_a_no_op() -> None:
    log = log_of(1, 1)
    log.append([])
    assert terms_of(log) == [1, 1]
    assert log.stable == 2


def test_append_after_the_last_entry_extends_without_truncation() -> None:
    log = log_of(1, 1)
    log.append(entries(2, start=3))
    assert terms_of(log) == [1, 1, 2]
    assert log.truncations == 0
    assert log.unstable_entries() == tuple(entries(2, start=3))


def test_append_over_uncommitted_entries_replaces_them() -> None:
    log = log_of(1, 1, 1, commit=1)
    log.append(entries(3, start=2))
    assert terms_of(log) == [1, 3]
    assert log.truncations == 1


# --------------------------------------------------------------------------------------------
# find_conflict / find_conflict_by_term (§5.3 fast back-up)


def test_find_conflict_reports_first_new_or_disagreeing_index() -> None:
    log = log_of(1, 1, 2)
    assert log.find_conflict(entries(1, 1, 2)) == 0
    assert log.find_conflict(entries(1, 3, start=2)) == 3
    assert log.find_conflict(entries(2, 3, start=3)) == 4
    assert log.find_conflict([]) == 0


# Terms by index 1..10: 1 1 1 4 4 5 5 6 6 6 (the shape of the paper's Figure 7 leader).
FIGURE_7 = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (10, 6, (10, 6)),
        (10, 5, (7, 5)),
        (10, 4, (5, 4)),
        (10, 3, (3, 1)),
        (10, 1, (3, 1)),
        (10, 0, (0, 0)),
        (6, 6, (6, 5)),
        (4, 2, (3, 1)),
        (0, 9, (0, 0)),
        (50, 5, (7, 5)),
        (50, 9, (10, 6)),
    ],
)
def test_find_conflict_by_term_examples(index: int, term: int, expected: tuple[int, int]) -> None:
    assert log_of(*FIGURE_7).find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_stops_at_the_snapshot() -> None:
    log = RaftLog(snapshot(3, 1), entries(4, 4, 5, start=4), 0)
    assert log.find_conflict_by_term(6, 5) == (6, 5)
    assert log.find_conflict_by_term(6, 4) == (5, 4)
    assert log.find_conflict_by_term(6, 3) == (3, 1)


# --------------------------------------------------------------------------------------------
# slice and committed entries


def test_slice_returns_the_half_open_range() -> None:
    log = log_of(1, 1, 2, 2, 3)
    assert [e.index for e in log.slice(2, 5, 1 << 20)] == [2, 3, 4]


def test_slice_with_tiny_byte_cap_still_returns_one_entry() -> None:
    log = log_of(1, 1, 2)
    assert [e.index for e in log.slice(1, 4, 0)] == [1]
    assert [e.index for e in log.slice(2, 4, 1)] == [2]


def test_slice_stops_once_the_byte_cap_would_be_exceeded() -> None:
    log = RaftLog(None, [Entry(i, 1, b"x" * 84) for i in range(1, 6)], 0)
    size = log.entries[0].size
    assert len(log.slice(1, 6, size)) == 1
    assert len(log.slice(1, 6, 2 * size - 1)) == 1
    assert len(log.slice(1, 6, 2 * size)) == 2
    assert len(log.slice(1, 6, 10_000)) == 5


@pytest.mark.parametrize("length", [0, 1, 2, 3, 84, 1000, 65_537])
def test_an_entry_counts_at_least_its_encoded_size(length: int) -> None:
    entry = Entry(2**62, 2**62, bytes(range(256)) * (length // 256) + b"x" * (length % 256))
    encoded = json.dumps(entry_to_dict(entry), separators=(",", ":"))
    assert entry.size >= len(encoded)


def test_slice_is_clamped_to_the_log() -> None:
    log = RaftLog(snapshot(3, 1), entries(2, 2, start=4), 0)
    assert [e.index for e in log.slice(1, 100, 1 << 20)] == [4, 5]
    assert log.slice(6, 10, 1 << 20) == ()
    assert log.slice(5, 5, 1 << 20) == ()


def test_next_committed_entries_runs_from_applied_to_committed() -> None:
    log = log_of(1, 1, 1, 1, commit=3)
    assert [e.index for e in log.next_committed_entries(1 << 20)] == [1, 2, 3]
    log.applied_to(2)
    assert [e.index for e in log.next_committed_entries(1 << 20)] == [3]
    log.applied_to(3)
    assert log.next_committed_entries(1 << 20) == ()


def test_applied_beyond_commit_is_a_log_invariant_error() -> None:
    log = log_of(1, 1, commit=1)
    with pytest.raises(LogInvariantError):
        log.applied_to(2)


def test_commit_beyond_last_index_is_a_log_invariant_error() -> None:
    log = log_of(1, 1)
    with pytest.raises(LogInvariantError):
        log.commit_to(3)


def test_section_5_4_2_only_current_term_entries_are_committed_by_counting() -> None:
    log = log_of(1, 1, 2, 3)
    assert not log.maybe_commit(3, 3)  # entry 3 is from term 2
    assert log.committed == 0
    assert log.maybe_commit(4, 3)
    assert log.committed == 4
    assert not log.maybe_commit(4, 3)  # nothing new


# --------------------------------------------------------------------------------------------
# §5.4.1 election restriction


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [
        (5, 3, True),  # identical
        (6, 3, True),  # same term, longer
        (4, 3, False),  # same term, shorter
        (1, 4, True),  # higher term wins even when shorter
        (100, 2, False),  # lower term loses even when longer
        (0, 0, False),
    ],
)
def test_section_5_4_1_is_up_to_date(last_index: int, last_term: int, up_to_date: bool) -> None:
    log = log_of(1, 1, 2, 3, 3)
    assert log.is_up_to_date(last_index, last_term) is up_to_date


def test_section_5_4_1_empty_log_grants_to_anyone() -> None:
    assert RaftLog(None, [], 0).is_up_to_date(0, 0)


def test_section_5_4_1_uses_snapshot_term_when_log_is_compacted_away() -> None:
    log = RaftLog(snapshot(10, 4), [], 0)
    assert log.is_up_to_date(10, 4)
    assert not log.is_up_to_date(9, 4)
    assert not log.is_up_to_date(50, 3)


# --------------------------------------------------------------------------------------------
# Snapshots: compact (local) and restore (from the leader)


def test_compact_drops_entries_and_keeps_offsets_right() -> None:
    log = log_of(1, 1, 2, 2, 3, 3, commit=5)
    log.applied_to(4)
    snap = snapshot(4, 2)
    log.compact(snap)
    assert (log.offset, log.offset_term, log.first_index, log.last_index) == (4, 2, 5, 6)
    assert log.term(4) == 2
    assert log.term(3) is None
    assert log.entry(5) == Entry(5, 3, b"5")
    assert [e.index for e in log.slice(1, 7, 1 << 20)] == [5, 6]
    assert log.snapshot is snap
    assert log.unstable_snapshot is snap
    assert log.committed == 5
    assert log.applied == 4
    assert log.last_term == 3


def test_compact_everything_keeps_last_index_and_term() -> None:
    log = log_of(1, 2, 2, commit=3)
    log.applied_to(3)
    log.compact(snapshot(3, 2))
    assert log.entries == []
    assert (log.last_index, log.last_term) == (3, 2)
    log.append(entries(3, start=4))
    assert log.last_index == 4
    assert log.term(3) == 2


def test_compact_marks_compacted_unstable_entries_as_stable() -> None:
    log = RaftLog(None, [], 0)
    log.append(entries(1, 1, 1))
    log.commit_to(3)
    log.applied_to(2)
    log.compact(snapshot(2, 1))
    assert log.stable == 2
    assert log.unstable_entries() == (Entry(3, 1, b"3"),)


def test_restore_replaces_the_whole_log() -> None:
    log = log_of(1, 1, 2, commit=1)
    snap = snapshot(20, 7)
    log.restore(snap)
    assert log.entries == []
    assert (log.offset, log.first_index, log.last_index, log.last_term) == (20, 21, 20, 7)
    assert log.term(20) == 7
    assert log.term(3) is None
    assert log.committed == 20
    assert log.stable == 20
    assert log.snapshot is snap
    assert log.unstable_snapshot is snap
    assert log.unstable_entries() == ()
    assert log.maybe_append(20, 7, 21, entries(7, start=21)) == 21
    assert log.committed == 21


# --------------------------------------------------------------------------------------------
# Stability (what must still be persisted)


def test_unstable_entries_and_stable_to() -> None:
    log = log_of(1, 1)
    log.append(entries(1, 2, start=3))
    assert [e.index for e in log.unstable_entries()] == [3, 4]
    log.stable_to(3, 1)
    assert [e.index for e in log.unstable_entries()] == [4]
    log.stable_to(4, 2)
    assert log.unstable_entries() == ()


def test_stable_to_ignores_a_stale_term_or_lower_index() -> None:
    log = log_of(1, 1)
    log.append(entries(1, 1, start=3))
    log.stable_to(4, 9)  # wrong term: the entries were replaced since
    assert log.stable == 2
    log.stable_to(4, 1)
    log.stable_to(3, 1)  # lower: stable never moves back this way
    assert log.stable == 4


def test_stable_to_after_truncation_does_not_mark_replaced_entries_stable() -> None:
    log = log_of(1, 1)
    log.append(entries(1, 1, start=3))
    log.append(entries(2, start=3))  # entries 3, 4 of term 1 replaced before being persisted
    log.stable_to(4, 1)  # the late acknowledgement of the old batch
    assert log.stable == 2
    assert [e.index for e in log.unstable_entries()] == [3]


# --------------------------------------------------------------------------------------------
# Membership changes in the log


def test_last_config_entry_finds_latest_at_or_below() -> None:
    log = RaftLog(None, [Entry(1, 1), config_entry(2, 1, "a"), Entry(3, 1)], 0)
    log.append([config_entry(4, 1, "b"), Entry(5, 1)])
    assert log.last_config_entry(10) == log.entry(4)
    assert log.last_config_entry(4) == log.entry(4)
    assert log.last_config_entry(3) == log.entry(2)
    assert log.last_config_entry(1) is None
    assert log.has_config_entry(log.entries)
    assert not log.has_config_entry(entries(1, 1))


def test_last_config_entry_forgets_a_truncated_change() -> None:
    log = RaftLog(None, [Entry(1, 1), config_entry(2, 1, "a")], 0)
    log.append([config_entry(3, 1, "b"), Entry(4, 1)])
    log.append(entries(2, 2, start=3))  # a new leader overwrites 3 and 4
    assert log.last_config_entry(10) == log.entry(2)
    log.append([config_entry(5, 2, "c")])
    assert log.last_config_entry(10) == log.entry(5)
    assert log.last_config_entry(4) == log.entry(2)


def test_last_config_entry_forgets_a_replaced_change_at_the_same_index() -> None:
    log = RaftLog(None, [Entry(1, 1)], 0)
    log.append([config_entry(2, 1, "a")])
    log.append([config_entry(2, 2, "b")])
    assert log.last_config_entry(2) == config_entry(2, 2, "b")
    log.append([Entry(2, 3)])
    assert log.last_config_entry(2) is None


def test_last_config_entry_after_compaction_is_gone_below_the_snapshot() -> None:
    log = RaftLog(None, [Entry(1, 1), config_entry(2, 1, "a"), Entry(3, 1), config_entry(4, 1)], 4)
    log.applied_to(3)
    log.compact(snapshot(3, 1))
    assert log.last_config_entry(3) is None
    assert log.last_config_entry(10) == log.entry(4)
    log.applied_to(4)
    log.compact(snapshot(4, 1))
    assert log.last_config_entry(10) is None


def test_last_config_entry_after_restore_is_none() -> None:
    log = RaftLog(None, [config_entry(1, 1)], 0)
    log.restore(snapshot(9, 2))
    assert log.last_config_entry(100) is None
