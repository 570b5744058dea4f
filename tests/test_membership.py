"""Single-server membership changes (thesis §4.1), with learners (thesis §4.2.1).

A change is one CONFIG entry that adds or removes one server; every node uses the latest
configuration in its log, committed or not, so the change takes effect when appended and is undone
if the entry is truncated. A leader allows one pending change at a time, and only after it has
committed an entry of its own term. A removed leader steps down once the change commits (thesis
§4.2.2) and hands over at once with TimeoutNow.
"""

from __future__ import annotations

import random

import pytest
from helpers.core import drain, elect

from catga_sync.errors import MembershipChangeError, NotLeaderError
from catga_sync.raft import (
    AppendEntries,
    AppendResponse,
    ConfigChange,
    ConfigChangeType,
    Entry,
    EntryType,
    Membership,
    RaftConfig,
    RaftCore,
    Role,
)
from catga_sync.raft.codec import encode_config_entry
from catga_sync.testing import SimulatedCluster

SEEDS = (1, 2, 3)
ELECTION_TICKS = 10
ADD_VOTER = ConfigChangeType.ADD_VOTER
ADD_LEARNER = ConfigChangeType.ADD_LEARNER
REMOVE = ConfigChangeType.REMOVE


def _settled(seed: int, nodes: int = 3) -> tuple[SimulatedCluster, str, list[str]]:
    """A cluster with a leader that has committed one command everywhere."""
    cluster = SimulatedCluster(nodes, seed=seed, election_ticks=ELECTION_TICKS)
    leader = cluster.wait_for_leader()
    cluster.commit(b"settled")
    return cluster, leader, sorted(n for n in cluster.nodes if n != leader)


def _commit_on(cluster: SimulatedCluster, data: bytes, nodes: list[str]) -> Entry:
    """Propose on the leader and step until ``nodes`` applied it (``cluster.commit`` would also
    wait for removed nodes that are still running)."""
    entry = cluster.propose(data)
    cluster.run_until(lambda: cluster.is_committed(entry, nodes))
    return entry


def _change_and_commit(
    cluster: SimulatedCluster, change: ConfigChangeType, node: str, nodes: list[str]
) -> Entry:
    entry = cluster.change_membership(change, node)
    cluster.run_until(lambda: cluster.is_committed(entry, nodes))
    return entry


# -- one core, driven by hand ----------------------------------------------------------------------


ABC = Membership(frozenset("abc"))
ABC_IDS = frozenset({"n0", "n1", "n2"})


# -- adding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_added_voter_catches_up_and_every_node_knows_the_new_membership(seed: int) -> None:
    cluster, leader, _ = _settled(seed)
    cluster.add_node("n3")

    _change_and_commit(cluster, ADD_VOTER, "n3", list(cluster.nodes))
    cluster.commit(b"after the change")

    expected = Membership(frozenset({"n0", "n1", "n2", "n3"}))
    assert {n: cluster.core(n).membership for n in cluster.nodes} == dict.fromkeys(
        cluster.nodes, expected
    )
    assert cluster.applied("n3") == cluster.applied(leader) == [b"settled", b"after the change"]


@pytest.mark.parametrize("seed", SEEDS)
def test_after_adding_a_fourth_voter_a_commit_needs_three(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.add_node("n3")
    _change_and_commit(cluster, ADD_VOTER, "n3", list(cluster.nodes))

    cluster.crash(followers[0])
    _commit_on(cluster, b"three of four", [leader, followers[1], "n3"])
    cluster.crash(followers[1])
    entry = cluster.propose(b"two of four")
    cluster.run(ELECTION_TICKS)

    assert cluster.core("n3").log.last_index >= entry.index, "n3 has it..."
    assert cluster.core(leader).commit_index < entry.index, "...but 2 of 4 is no majority"


@pytest.mark.parametrize("seed", SEEDS)
def test_learner_receives_and_applies_the_log(seed: int) -> None:
    cluster, leader, _ = _settled(seed)
    cluster.add_node("n3")

    _change_and_commit(cluster, ADD_LEARNER, "n3", list(cluster.nodes))
    cluster.commit(b"for everyone")

    assert cluster.core("n3").membership == Membership(ABC_IDS, frozenset({"n3"}))
    assert not cluster.core("n3").is_voter
    assert cluster.applied("n3") == cluster.applied(leader)


@pytest.mark.parametrize("seed", SEEDS)
def test_isolated_learner_never_campaigns(seed: int) -> None:
    cluster, _, _ = _settled(seed)
    cluster.add_node("n3")
    _change_and_commit(cluster, ADD_LEARNER, "n3", list(cluster.nodes))
    term = cluster.core("n3").term

    cluster.isolate("n3")
    roles = set()
    for _ in range(30 * ELECTION_TICKS):
        cluster.step()
        roles.add(cluster.core("n3").role)

    assert roles == {Role.FOLLOWER}
    assert cluster.core("n3").term == term


@pytest.mark.parametrize("seed", SEEDS)
def test_learner_acknowledgements_neither_commit_nor_keep_a_leader_in_power(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.add_node("n3")
    _change_and_commit(cluster, ADD_LEARNER, "n3", list(cluster.nodes))

    for node in followers:
        cluster.crash(node)
    entry = cluster.propose(b"only the leader and the learner")
    cluster.run(3)

    assert cluster.core("n3").log.last_index >= entry.index
    assert cluster.core(leader).commit_index < entry.index
    cluster.run_until(
        lambda: cluster.core(leader).role is not Role.LEADER, max_ticks=2 * ELECTION_TICKS
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_learner_is_promoted_only_once_it_has_caught_up(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    cluster.add_node("n3")
    _change_and_commit(cluster, ADD_LEARNER, "n3", list(cluster.nodes))
    cluster.isolate("n3")
    for k in range(5):
        _commit_on(cluster, f"missed {k}".encode(), [leader, *followers])

    with pytest.raises(MembershipChangeError, match="has not caught up"):
        cluster.change_membership(ADD_VOTER, "n3")
    cluster.heal()
    commit = cluster.core(leader).commit_index
    cluster.run_until(lambda: cluster.core(leader).progress["n3"].match >= commit)
    _change_and_commit(cluster, ADD_VOTER, "n3", list(cluster.nodes))

    assert all(cluster.core(n).membership.voters == ABC_IDS | {"n3"} for n in cluster.nodes)
    assert all(not cluster.core(n).membership.learners for n in cluster.nodes)


# -- removing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_removed_follower_stops_receiving_and_the_rest_commit_without_it(seed: int) -> None:
    cluster, leader, (removed, kept) = _settled(seed)
    term = cluster.core(leader).term
    _change_and_commit(cluster, REMOVE, removed, [leader, kept])
    last = cluster.core(removed).log.last_index

    for k in range(5):
        _commit_on(cluster, f"without it {k}".encode(), [leader, kept])
    cluster.run(20 * ELECTION_TICKS)

    assert cluster.core(removed).log.last_index == last
    assert cluster.core(leader).membership.voters == {leader, kept}
    assert cluster.leader() == leader and cluster.core(leader).term == term, "no disruption"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_removed_follower_learns_of_its_removal_though_the_first_appends_are_lost(
    seed: int,
) -> None:
    """The leader goes on sending the log to the node it removed until that node holds the
    change (for a few election timeouts), so losing the first append is not for ever."""
    cluster, leader, (removed, kept) = _settled(seed)
    term = cluster.core(leader).term
    cluster.set_faults(drop=1.0, link=(leader, removed))
    _change_and_commit(cluster, REMOVE, removed, [leader, kept])
    cluster.run(ELECTION_TICKS)  # its first farewells are lost
    assert removed in cluster.core(removed).membership.nodes
    cluster.set_faults(link=(leader, removed))
    cluster.run(ELECTION_TICKS)

    assert removed not in cluster.core(removed).membership.nodes
    cluster.run(20 * ELECTION_TICKS)
    assert cluster.leader() == leader and cluster.core(leader).term == term, "no disruption"
    assert removed not in cluster.core(leader).progress, "and the leader forgot it"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_node_removed_and_added_back_at_once_with_empty_storage_catches_up(seed: int) -> None:
    """Replacing a dead node under its endpoint: removed, then a new, empty process added
    back while the leader still says farewell to the old one. The leader must forget what the
    old one held (it once looped for ever on the stale match, and the new one never caught
    up)."""
    cluster, leader, (dead, _) = _settled(seed)
    for k in range(5):
        cluster.commit(f"x{k}".encode())
    cluster.crash(dead)
    for k in range(3):
        cluster.commit(f"y{k}".encode())
    removal = cluster.change_membership(REMOVE, dead)
    cluster.run_until(lambda: cluster.core(leader).commit_index >= removal.index)
    del cluster.nodes[dead]
    cluster.add_node(dead)  # a new process, empty storage, the same id
    cluster.set_faults(delay=(1, 1))
    cluster.change_membership(ADD_LEARNER, dead)

    cluster.run_until(
        lambda: cluster.core(dead).log.last_index == cluster.core(leader).log.last_index,
        max_ticks=20 * ELECTION_TICKS,
    )
    assert cluster.applied(dead) == cluster.applied(leader)


@pytest.mark.parametrize("seed", SEEDS)
def test_removed_follower_learns_of_its_removal_and_never_campaigns(seed: int) -> None:
    cluster, leader, (removed, kept) = _settled(seed)
    entry = _change_and_commit(cluster, REMOVE, removed, [leader, kept])
    cluster.run_until(lambda: cluster.core(removed).log.last_index >= entry.index)

    assert removed not in cluster.core(removed).membership.nodes, "the last append told it"
    roles = set()
    for _ in range(30 * ELECTION_TICKS):
        cluster.step()
        roles.add(cluster.core(removed).role)
    assert roles == {Role.FOLLOWER}


@pytest.mark.parametrize("seed", SEEDS)
def test_removed_leader_leads_until_the_change_commits_then_hands_over(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    term = cluster.core(leader).term

    entry = cluster.change_membership(REMOVE, leader)
    assert cluster.core(leader).membership.voters == set(followers), "in force once appended"
    for _ in range(ELECTION_TICKS):
        if cluster.core(leader).role is not Role.LEADER:
            break
        assert cluster.core(leader).commit_index < entry.index
        cluster.step()
    assert cluster.core(leader).role is Role.FOLLOWER
    assert cluster.core(leader).commit_index >= entry.index
    ticks = cluster.run_until(lambda: cluster.leader() is not None, max_ticks=3)

    successor = cluster.leader()
    assert successor in followers
    assert cluster.core(successor).term == term + 1
    assert ticks <= 3


@pytest.mark.parametrize("seed", SEEDS)
def test_removed_leader_never_campaigns_afterwards(seed: int) -> None:
    cluster, leader, followers = _settled(seed)
    _change_and_commit(cluster, REMOVE, leader, followers)
    cluster.run_until(lambda: cluster.leader() is not None)

    roles = set()
    for _ in range(30 * ELECTION_TICKS):
        cluster.step()
        roles.add(cluster.core(leader).role)

    assert roles == {Role.FOLLOWER}
    _commit_on(cluster, b"on the new leader", followers)


@pytest.mark.parametrize("seed", SEEDS)
def test_removed_leader_does_not_count_itself_towards_the_majority(seed: int) -> None:
    """Thesis §4.2.2: until C_new commits, the leader manages a cluster without itself."""
    cluster, leader, followers = _settled(seed)
    cluster.isolate(followers[1])

    entry = cluster.change_membership(REMOVE, leader)
    cluster.run(ELECTION_TICKS // 2)

    assert cluster.core(followers[0]).log.last_index >= entry.index
    assert cluster.core(leader).commit_index < entry.index, "1 of {f0, f1} is no majority"
    assert cluster.core(leader).role is Role.LEADER


# -- the rules of a change -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_one_change_at_a_time(seed: int) -> None:
    cluster, _, _ = _settled(seed)
    cluster.add_node("n3")
    cluster.add_node("n4")
    first = cluster.change_membership(ADD_LEARNER, "n3")

    with pytest.raises(MembershipChangeError, match=f"already pending at index {first.index}"):
        cluster.change_membership(ADD_LEARNER, "n4")
    cluster.run_until(lambda: cluster.is_committed(first, [*ABC_IDS, "n3"]))
    cluster.change_membership(ADD_LEARNER, "n4")


def test_new_leader_refuses_a_change_until_its_no_op_commits() -> None:
    core = RaftCore(RaftConfig("a", ABC), rng=random.Random(0))
    elect(core)
    change = ConfigChange(REMOVE, "c")

    with pytest.raises(MembershipChangeError, match="not committed an entry in its term"):
        core.propose_config_change(change)
    core.step(AppendResponse(core.term, "b", "a", index=core.log.last_index))
    drain(core)
    entry = core.propose_config_change(change)

    assert entry.type is EntryType.CONFIG
    assert core.membership == Membership(frozenset("ab"))


@pytest.mark.parametrize(
    ("change", "node", "message"),
    [
        (REMOVE, "n9", "'n9' is not a member"),
        (ADD_VOTER, "n1", "'n1' is already a voter"),
        (ADD_LEARNER, "n1", "'n1' is a voter"),
        (ADD_VOTER, "", "non-empty node id"),
        (ADD_LEARNER, "n3", "'n3' is already a learner"),
    ],
)
def test_senseless_changes_are_refused(change: ConfigChangeType, node: str, message: str) -> None:
    cluster, leader, _ = _settled(1)
    cluster.add_node("n3")
    _change_and_commit(cluster, ADD_LEARNER, "n3", list(cluster.nodes))
    log = cluster.core(leader).log.last_index

    with pytest.raises(MembershipChangeError, match=message):
        cluster.change_membership(change, node)

    assert cluster.core(leader).log.last_index == log
    assert cluster.core(leader).membership == Membership(ABC_IDS, frozenset({"n3"}))


def test_removing_the_last_voter_is_refused() -> None:
    cluster = SimulatedCluster(1, seed=1)
    cluster.commit(b"alone")

    with pytest.raises(MembershipChangeError, match="the last voter"):
        cluster.change_membership(REMOVE, "n0")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_follower_refuses_a_change_and_names_the_leader(seed: int) -> None:
    cluster, leader, followers = _settled(seed)

    with pytest.raises(NotLeaderError) as caught:
        cluster.core(followers[0]).propose_config_change(ConfigChange(REMOVE, followers[1]))

    assert caught.value.leader_id == leader


# -- a change takes effect when appended, and is undone when truncated -----------------------------


def test_follower_uses_a_configuration_as_soon_as_it_appends_it() -> None:
    follower = RaftCore(RaftConfig("b", ABC), rng=random.Random(0))
    abcd = Membership(frozenset("abcd"))
    config = Entry(2, 1, encode_config_entry(ConfigChange(ADD_VOTER, "d"), abcd), EntryType.CONFIG)

    follower.step(AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1), config), commit=1))

    assert follower.commit_index == 1, "the change is not committed..."
    assert follower.membership == abcd, "...yet in force"
    ready = follower.ready()
    assert ready.membership == abcd
    follower.advance(ready)

    # A leader of term 2 that never had the entry overwrites it: the old membership is back.
    follower.step(AppendEntries(2, "c", "b", 1, 1, (Entry(2, 2),), commit=2))

    assert follower.membership == ABC
    assert follower.ready().membership == ABC


@pytest.mark.parametrize("seed", SEEDS)
def test_change_in_a_minority_is_truncated_and_the_old_membership_restored(seed: int) -> None:
    cluster, old, followers = _settled(seed, nodes=5)
    ally, majority = followers[0], followers[1:]
    cluster.split([old, ally], majority)
    before = Membership(frozenset(cluster.nodes))
    after = Membership(frozenset(cluster.nodes) - {majority[-1]})

    entry = cluster.change_membership(REMOVE, majority[-1])
    cluster.run_until(lambda: cluster.core(ally).log.last_index >= entry.index)
    assert cluster.core(old).membership == cluster.core(ally).membership == after
    assert cluster.core(old).commit_index < entry.index, "2 of 4 cannot commit it"
    cluster.run_until(lambda: any(cluster.core(n).role is Role.LEADER for n in majority))
    _commit_on(cluster, b"on the majority side", majority)
    cluster.run_until(lambda: cluster.core(old).role is not Role.LEADER)
    cluster.heal()
    cluster.commit(b"after healing")

    for node in (old, ally):
        assert cluster.core(node).log.entry(entry.index).type is EntryType.NORMAL
    assert {n: cluster.core(n).membership for n in cluster.nodes} == dict.fromkeys(
        cluster.nodes, before
    )
    cluster.check_converged()


# -- changes under faults --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_changes_under_message_loss_and_leader_crashes_keep_one_leader_per_term(
    seed: int,
) -> None:
    """Adds (as learner, then voter) and removals, one after another, while links drop,
    duplicate and delay messages and leaders crash and restart. The simulator checks after
    every event that no two nodes lead one term — whichever configuration each one uses — and
    the logs' safety; at the end the members agree on one membership and one log."""
    rng = random.Random(seed)
    cluster = SimulatedCluster(3, seed=seed, election_ticks=ELECTION_TICKS)
    cluster.wait_for_leader()
    for spare in ("n3", "n4"):
        cluster.add_node(spare)
    cluster.set_faults(drop=0.1, duplicate=0.05, delay=(0, 3))
    changes = 0
    for step in range(60):
        leader = cluster.leader()
        roll = rng.random()
        if leader is not None and roll < 0.35:
            membership = cluster.core(leader).membership
            outside = sorted(set(cluster.nodes) - membership.nodes)
            learners = sorted(membership.learners)
            voters = sorted(membership.voters)
            options = [(ADD_LEARNER, n) for n in outside]
            options += [(ADD_VOTER, n) for n in learners]
            options += [(REMOVE, n) for n in voters + learners if len(voters) > 1]
            change, node = rng.choice(options)
            try:
                cluster.change_membership(change, node)
                changes += 1
            except (MembershipChangeError, NotLeaderError):
                pass  # one change at a time, or a leader that just lost its term
        elif leader is not None and roll < 0.45:
            cluster.crash(leader)
        elif roll < 0.6:
            for node in cluster.nodes:
                if cluster.nodes[node].core is None:
                    cluster.restart(node)
        elif leader is not None:
            cluster.propose(f"{seed}-{step}".encode(), leader)
        cluster.run(rng.randint(1, 3 * ELECTION_TICKS))
    assert changes >= 3, "the run barely changed the membership"  # 10 to 23 over 40 seeds

    cluster.set_faults()
    for node in cluster.nodes:
        if cluster.nodes[node].core is None:
            cluster.restart(node)
    # Nodes removed on the way run on outside the cluster: only the members must converge.
    leader = cluster.wait_for_leader(max_ticks=3000)
    entry = cluster.propose(b"after the faults", leader)
    members = cluster.core(leader).membership.nodes
    cluster.run_until(lambda: cluster.is_committed(entry, members), max_ticks=5000)
    membership = cluster.core(leader).membership
    for node in membership.nodes:
        assert cluster.core(node).membership == membership, node
        assert cluster.applied(node) == cluster.applied(leader), node
