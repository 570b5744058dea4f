"""The log lines a person follows (``docs/logging.rst``): the core's events written by
:class:`~catga_sync.runtime.eventlog.EventLog` on ``catga_sync.raft``, one line each, and
nothing per heartbeat.

The first half feeds events to an EventLog with a hand-driven clock and reads the exact lines;
the second runs real nodes (:class:`~helpers.cluster.LocalCluster`) and reads ``caplog``.
"""

from __future__ import annotations

import logging
import time
import typing

import pytest
from helpers.cluster import WAIT, LocalCluster
from helpers.wait import poll

from catga_sync.raft import (
    AppendEntries,
    CampaignStarted,
    ConfigChange,
    ConfigChangeApplied,
    ConfigChangeType,
    ElectionLost,
    ElectionWon,
    Entry,
    InstallSnapshot,
    LeaderSeen,
    Membership,
    RaftEvent,
    SnapshotInstalled,
    SnapshotMeta,
    SnapshotSent,
    SnapshotTaken,
    StepDownReason,
    SteppedDown,
    VoteCast,
    VoteRefusal,
)
from catga_sync.runtime.eventlog import (
    REMINDER_SECONDS,
    SLOW_WRITE_REPEAT,
    EventLog,
    SlowWrites,
    describe_message,
)

RAFT = "catga_sync.raft"
MESSAGES = "catga_sync.raft.messages"

NAMES = {"http://a": "a", "http://b": "b", "http://c": "c"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events(clock: Clock) -> EventLog:
    return EventLog("a", NAMES.get, clock=clock)


def _lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == RAFT and r.levelno == level]


# -- EventLog, with a hand-driven clock --------------------------------------------------------


def test_every_event_type_has_a_line(events: EventLog) -> None:
    assert set(typing.get_args(RaftEvent)) == set(events._handlers)


def test_a_campaign_and_its_win_read_as_three_lines_with_the_time_it_took(
    events: EventLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RAFT)
    events.report([CampaignStarted(4, True, ("http://b", "http://c"))])
    clock.now += 0.004
    events.report([CampaignStarted(4, False, ("http://b", "http://c"))])
    clock.now += 0.041
    events.report([ElectionWon(4, ("http://a", "http://c"))])

    assert _lines(caplog) == [
        "node a became pre-candidate for term 4, asking b, c for pre-votes",
        "node a became candidate for term 4, asking b, c for votes",
        "node a won the election for term 4 with votes from a, c in 45 ms",
    ]


def test_an_unknown_name_falls_back_to_the_raft_id(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RAFT)
    EventLog("a", NAMES.get, clock=clock).report([LeaderSeen("http://z:5000", 7)])
    assert _lines(caplog) == ["node a follows http://z:5000, leader of term 7"]


def test_repeated_campaigns_without_a_leader_are_quiet_with_a_reminder(
    events: EventLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """An isolated node campaigns every election timeout: one INFO line, then DEBUG, then a
    reminder at INFO every REMINDER_SECONDS, and the leader it finds says how long it took."""
    caplog.set_level(logging.DEBUG, logger=RAFT)
    for _ in range(40):
        events.report([CampaignStarted(3, True, ("http://b", "http://c"))])
        clock.now += 0.3
    events.report([LeaderSeen("http://b", 3)])

    info = _lines(caplog)
    assert info[0] == "node a became pre-candidate for term 3, asking b, c for pre-votes"
    assert info[1] == (
        "node a became pre-candidate for term 3, asking b, c for pre-votes "
        "(campaign 35, no leader for 10.2 s)"
    )
    assert info[2] == "node a follows b, leader of term 3 (no leader for 12.0 s)"
    assert len(info) == 3
    assert len(_lines(caplog, logging.DEBUG)) == 38
    assert REMINDER_SECONDS == 10.0


def test_a_win_after_several_campaigns_counts_them(
    events: EventLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RAFT)
    for term in (5, 6):  # a split vote, then a win: each pre-vote and its vote is one campaign
        events.report([CampaignStarted(term, True, ("http://b",))])
        events.report([CampaignStarted(term, False, ("http://b",))])
        clock.now += 0.2
    events.report([ElectionWon(6, ("http://a", "http://b"))])
    assert _lines(caplog)[-1] == (
        "node a won the election for term 6 with votes from a, b in 400 ms, after 2 campaigns"
    )


def test_a_transfer_campaign_says_who_handed_over(
    events: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RAFT)
    events.report([CampaignStarted(9, False, ("http://b", "http://c"), "http://b")])
    assert _lines(caplog) == [
        "node a became candidate for term 9, asking b, c for votes (leadership transfer from b)"
    ]


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            SteppedDown(3, StepDownReason.HIGHER_TERM, "http://b", 5),
            "node a stepped down as leader of term 3: b has a higher term (5)",
        ),
        (
            SteppedDown(3, StepDownReason.CHECK_QUORUM, None, 3, ("http://a",)),
            "node a stepped down as leader of term 3: check-quorum lost: no majority of voters "
            "answered within an election timeout (heard from: none)",
        ),
        (
            SteppedDown(3, StepDownReason.TRANSFER, "http://c", 4),
            "node a stepped down as leader of term 3: leadership transferred to c (term 4)",
        ),
        (
            SteppedDown(3, StepDownReason.REMOVED, "http://b", 3),
            "node a stepped down as leader of term 3: removed from the membership, handing over "
            "to b",
        ),
        (
            ElectionLost(4, True, ("http://b", "http://c")),
            "node a lost the pre-vote for term 4: refused by b, c",
        ),
        (
            ConfigChangeApplied(
                12,
                ConfigChange(ConfigChangeType.ADD_LEARNER, "http://d"),
                Membership(frozenset(NAMES), frozenset({"http://d"})),
            ),
            "node a applied a membership change at index 12: added learner http://d; "
            "voters: a, b, c; learners: http://d",
        ),
        (
            SnapshotTaken(10000, 3, 52311),
            "node a took a snapshot at index 10000 (term 3, 52311 bytes) and compacted its log",
        ),
        (
            SnapshotSent("http://c", 10000, 52311),
            "node a sends its snapshot at index 10000 (52311 bytes) to c, whose log is behind it",
        ),
        (
            SnapshotInstalled(10000, 3, 52311, "http://b"),
            "node a installed a snapshot from b at index 10000 (term 3, 52311 bytes)",
        ),
    ],
)
def test_each_event_reads_as_one_info_line(
    events: EventLog, caplog: pytest.LogCaptureFixture, event: RaftEvent, line: str
) -> None:
    caplog.set_level(logging.INFO, logger=RAFT)
    events.report([event])
    assert _lines(caplog) == [line]


def test_votes_are_debug_lines_with_the_reason(
    events: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=RAFT)
    events.report(
        [
            VoteCast("http://b", 4, False, True),
            VoteCast("http://c", 4, False, False, VoteRefusal.VOTED, "http://b"),
            VoteCast("http://c", 5, True, False, VoteRefusal.LOG_BEHIND),
            VoteCast("http://c", 5, True, False, VoteRefusal.HAS_LEADER, "http://b"),
            VoteCast("http://c", 6, True, False, VoteRefusal.LEADER_LEASE, "http://b"),
        ]
    )
    assert _lines(caplog, logging.INFO) == []
    assert _lines(caplog, logging.DEBUG) == [
        "node a granted its vote to b for term 4",
        "node a refused its vote to c for term 4: it voted for b",
        "node a refused its pre-vote to c for term 5: the log of c is behind its own",
        "node a refused its pre-vote to c for term 5: it follows b",
        "node a ignored the pre-vote request of c for term 6: it heard from leader b within the "
        "election timeout (leader lease)",
    ]


def test_a_message_is_described_without_its_data() -> None:
    entries = (Entry(8, 2, b"x" * 1000), Entry(9, 2, b"y"))
    message = AppendEntries(2, "http://a", "http://b", 7, 2, entries, 6)
    assert describe_message(message) == (
        "AppendEntries(term=2, prev_index=7, prev_term=2, entries=[8..9], commit=6)"
    )


def test_a_snapshot_chunk_is_described_by_its_place_and_size() -> None:
    meta = SnapshotMeta(100, 2, Membership(frozenset(NAMES)))
    message = InstallSnapshot(2, "http://a", "http://b", meta, 0, b"z" * 4975, True, "c0ffee")
    assert describe_message(message) == (
        "InstallSnapshot(term=2, meta=(index=100, term=2), offset=0, data=<4975 bytes>, "
        "done=True, checksum='c0ffee')"
    )


def test_a_leader_that_ignores_a_vote_request_says_it_leads(
    events: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=RAFT)
    events.report([VoteCast("http://c", 2, True, False, VoteRefusal.LEADER_LEASE, "http://a")])
    assert _lines(caplog, logging.DEBUG) == [
        "node a ignored the pre-vote request of c for term 2: it is the leader (leader lease)"
    ]


def test_slow_writes_warn_once_a_minute_with_the_count(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="catga_sync.node")
    slow = SlowWrites("a", 0.075, clock=clock)
    for _ in range(5):
        slow.note(0.2)
        clock.now += SLOW_WRITE_REPEAT / 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "node a: a write to storage took 200 ms, over half the election timeout (150 ms): the "
        "node cannot tick or answer meanwhile, so expect elections",
        "node a: a write to storage took 200 ms, over half the election timeout (150 ms): the "
        "node cannot tick or answer meanwhile, so expect elections (4 since the last)",
    ]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 3


# -- real nodes ------------------------------------------------------------------------------


def test_an_election_is_logged_by_the_winner_and_each_follower(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="catga_sync")
    with LocalCluster(3) as cluster:
        leader = cluster.leader()
        followers = cluster.followers()
        term = leader.status.term
        lines = _lines(caplog)
        assert any(
            line.startswith(f"node {leader.node_id} won the election for term {term} with votes")
            for line in lines
        ), lines
        for follower in followers:
            seen = f"node {follower.node_id} follows {leader.node_id}, leader of term {term}"
            assert any(line.startswith(seen) for line in lines), lines


def test_a_steady_cluster_logs_nothing_per_heartbeat(caplog: pytest.LogCaptureFixture) -> None:
    # A long election timeout: on a loaded machine a late heartbeat must not start an
    # election, whose lines (rightly) logged would fail this test of the heartbeats' silence.
    with LocalCluster(3, election_timeout=2.0, heartbeat_interval=0.05) as cluster:
        leader = cluster.leader()
        cluster.followers()
        caplog.set_level(logging.DEBUG, logger=RAFT)
        caplog.set_level(logging.INFO, logger=MESSAGES)
        caplog.clear()
        sent = leader.stats.messages_sent
        time.sleep(1.0)  # twenty heartbeat intervals of 50 ms: watch the log stay quiet
        assert leader.stats.messages_sent - sent >= 20
        assert leader.status.is_leader
        noisy = [r.getMessage() for r in caplog.records if r.name.startswith("catga_sync")]
        assert noisy == []


def test_a_crashed_leader_is_replaced_and_the_log_says_how(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="catga_sync")
    with LocalCluster(3) as cluster:
        old = cluster.leader()
        cluster.followers()
        caplog.clear()
        cluster.crash(old)
        new = cluster.leader(other_than=old)
        survivor = next(n for n in cluster.running() if n is not new)
        survivor.wait_for(lambda s: s.leader_id == new.node_id, WAIT)
        term = new.status.term
        lines = _lines(caplog)
        assert any(f"node {new.node_id} became pre-candidate for term {term}" in x for x in lines)
        assert any(f"node {new.node_id} won the election for term {term}" in x for x in lines)
        assert any(
            x.startswith(f"node {survivor.node_id} follows {new.node_id}, leader of term {term}")
            for x in lines
        ), lines


def test_an_isolated_leader_says_it_lost_check_quorum(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="catga_sync")
    with LocalCluster(3) as cluster:
        old = cluster.leader()
        cluster.followers()
        term = old.status.term
        cluster.isolate(old)
        line = (
            f"node {old.node_id} stepped down as leader of term {term}: check-quorum lost: "
            "no majority of voters answered within an election timeout (heard from: none)"
        )
        poll(lambda: line in _lines(caplog), WAIT, "the check-quorum line")
        cluster.heal()


def test_a_hand_off_on_stop_is_logged_as_a_transfer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="catga_sync")
    with LocalCluster(3) as cluster:
        old = cluster.leader()
        cluster.followers()
        term = old.status.term
        old.stop()
        new = cluster.leader(other_than=old)
        lines = _lines(caplog)
        assert (
            f"node {old.node_id} stepped down as leader of term {term}: leadership transferred "
            f"to {new.node_id} (term {term + 1})"
        ) in lines
        assert any(f"(leadership transfer from {old.node_id})" in x for x in lines), lines


def test_snapshots_are_logged_with_their_index_and_size(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="catga_sync")
    with LocalCluster(3, config={"snapshot_every": 5}) as cluster:
        leader = cluster.leader()
        for k in range(6):
            leader.propose(f"c{k}".encode(), timeout=WAIT)
        taken = f"node {leader.node_id} took a snapshot at index 5 (term"
        poll(lambda: any(x.startswith(taken) for x in _lines(caplog)), WAIT, "the snapshot line")


def test_each_message_is_a_debug_line_on_its_own_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with LocalCluster(3) as cluster:
        leader = cluster.leader()
        cluster.followers()
        caplog.set_level(logging.DEBUG, logger=MESSAGES)
        sent = f"node {leader.node_id} -> "

        def heartbeat_lines() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == MESSAGES and r.getMessage().startswith(sent)
            ]

        lines = poll(heartbeat_lines, WAIT, "a DEBUG line per message")
        assert ": Heartbeat(term=" in lines[0] or ": AppendEntries(term=" in lines[0]
        assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == MESSAGES)


def test_a_slow_disk_is_a_warning_once_not_per_write(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="catga_sync")
    with LocalCluster(3) as cluster:
        leader = cluster.leader()
        follower = cluster.follower()
        disk = cluster.disks[cluster.index(follower)]
        assert disk is not None
        disk.slow(0.1)  # the election timeout is 150 ms: a write of 100 ms starves the loop
        for k in range(3):
            leader.propose(f"c{k}".encode(), timeout=WAIT)

        def warnings() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "catga_sync.node" and r.levelno == logging.WARNING
            ]

        found = poll(warnings, WAIT, "the slow-write warning")
        disk.slow(0)
        assert found[0].startswith(f"node {follower.node_id}: a write to storage took ")
        assert "over half the election timeout (150 ms)" in found[0]
        assert len(warnings()) == 1
