"""The core's in-memory view of the replicated log: a snapshot, the entries after it, and marks.

Marks, all log indexes: ``offset`` (the snapshot's index) < entries ≤ ``last_index``;
``applied`` ≤ ``committed`` ≤ ``last_index``; ``stable`` is the last index known to be on disk.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from .messages import Entry, EntryType, Snapshot


class LogInvariantError(AssertionError):
    """The core was asked to do something Raft forbids (a bug, never bad input)."""


class RaftLog:
    def __init__(self, snapshot: Snapshot | None, entries: Sequence[Entry], commit: int) -> None:
        self.snapshot = snapshot
        self.offset = snapshot.meta.index if snapshot else 0
        self.offset_term = snapshot.meta.term if snapshot else 0
        self.entries: list[Entry] = list(entries)
        for k, entry in enumerate(self.entries):
            if entry.index != self.offset + 1 + k:
                raise ValueError(
                    f"stored log is not consecutive: entry {k} has index {entry.index}, "
                    f"expected {self.offset + 1 + k}"
                )
        if commit > self.last_index:
            raise ValueError(
                f"stored commit index {commit} is beyond the last stored entry {self.last_index}"
            )
        self.committed = max(commit, self.offset)
        self.applied = self.offset
        self.stable = self.last_index
        self.unstable_snapshot: Snapshot | None = None
        self.truncations = 0
        """How many times entries were overwritten; lets the core notice a membership undone."""
        self._config_indexes = [e.index for e in self.entries if e.type is EntryType.CONFIG]

    # -- reading ------------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None when compacted or not yet there."""
        k = index - self.offset - 1
        if k < 0:
            return self.offset_term if k == -1 else None
        entries = self.entries
        return entries[k].term if k < len(entries) else None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up to date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def slice(self, lo: int, hi: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries [lo, hi), at least one when any, stopping once ``max_bytes`` is exceeded."""
        offset = self.offset
        start = max(lo, offset + 1) - offset - 1
        stop = min(hi, offset + len(self.entries) + 1) - offset - 1
        if start >= stop:
            return ()
        window = self.entries[start:stop]
        size = 0
        for count, entry in enumerate(window):
            size += entry.size
            if count and size > max_bytes:
                return tuple(window[:count])
        return tuple(window)

    def unstable_entries(self) -> tuple[Entry, ...]:
        return (
            tuple(self.entries[self.stable - self.offset :])
            if self.stable < self.last_index
            else ()
        )

    def next_committed_entries(self, max_bytes: int) -> tuple[Entry, ...]:
        if self.applied >= self.committed:
            return ()
        return self.slice(self.applied + 1, self.committed + 1, max_bytes)

    def find_conflict(self, entries: Iterable[Entry]) -> int:
        """The index of the first entry that is new or disagrees with ours; 0 when none."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index ≤ ``index`` whose term is ≤ ``term``, and that term.

        The fast back-up of §5.3: both sides use it to skip every entry of a term that cannot
        match in one round trip.
        """
        index = min(index, self.last_index)
        if index < self.offset:
            return index, 0  # compacted: we cannot tell, so let the caller probe from there
        while index > self.offset:
            entry_term = self.entries[index - self.offset - 1].term
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return self.offset, self.offset_term

    # -- changing -----------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, first dropping any of ours from ``entries[0].index`` on."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogInvariantError(f"truncating committed entry {first} (commit {self.committed})")
        if first > self.last_index + 1:
            raise LogInvariantError(f"gap: appending {first} after {self.last_index}")
        if first <= self.last_index:
            self.truncations += 1
            del self.entries[first - self.offset - 1 :]
            while self._config_indexes and self._config_indexes[-1] >= first:
                self._config_indexes.pop()
        self.entries.extend(entries)
        self._config_indexes.extend(e.index for e in entries if e.type is EntryType.CONFIG)
        self.stable = min(self.stable, first - 1)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """§5.3 AppendEntries receiver rules 2–5; the last new index, or None on mismatch."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            self.append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def has_config_entry(self, entries: Iterable[Entry]) -> bool:
        return any(entry.type is EntryType.CONFIG for entry in entries)

    def last_config_entry(self, at_or_below: int) -> Entry | None:
        """The latest membership-change entry still in the log at or below an index."""
        position = bisect.bisect_right(self._config_indexes, at_or_below)
        if position == 0:
            return None
        index = self._config_indexes[position - 1]
        return self.entry(index) if index > self.offset else None

    def config_indexes_between(self, first: int, last: int) -> list[int]:
        """The indexes of the membership-change entries in ``first..last`` (inclusive)."""
        indexes = self._config_indexes
        if not indexes or indexes[-1] < first:
            return []  # the common case, with no bisect: no change at or after ``first``
        return indexes[bisect.bisect_left(indexes, first) : bisect.bisect_right(indexes, last)]

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index:
                raise LogInvariantError(f"commit {index} beyond last index {self.last_index}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """§5.4.2: commit by counting replicas only for an entry of the current term."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        if self.match_term(index, term) and index > self.stable:
            self.stable = index

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            if index > self.committed:
                raise LogInvariantError(f"applied {index} beyond commit {self.committed}")
            self.applied = index

    def compact(self, snapshot: Snapshot) -> None:
        """Drop entries at or below the snapshot the application took locally."""
        index = snapshot.meta.index
        del self.entries[: index - self.offset]
        self._config_indexes = [i for i in self._config_indexes if i > index]
        self.offset = index
        self.offset_term = snapshot.meta.term
        self.snapshot = snapshot
        self.unstable_snapshot = snapshot
        self.stable = max(self.stable, index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader (§7)."""
        self.entries = []
        self._config_indexes = []
        self.offset = snapshot.meta.index
        self.offset_term = snapshot.meta.term
        self.snapshot = snapshot
        self.unstable_snapshot = snapshot
        self.committed = self.offset
        self.stable = self.offset
