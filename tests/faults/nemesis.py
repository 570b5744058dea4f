"""Nemeses: the faults a run injects into a :class:`FaultCluster`, by name.

Each fault is a function of the cluster and a random source that breaks something and returns
a line saying what it did; :func:`heal` undoes them all (links whole, paused processes
continued, killed ones restarted). The names are those of Jepsen's nemeses where one fits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .cluster import FaultCluster, HostedNode

Fault = Callable[[FaultCluster, random.Random], str]


def _leader_or_any(cluster: FaultCluster, rng: random.Random) -> HostedNode:
    return cluster.current_leader() or rng.choice(cluster.running())


def _follower(cluster: FaultCluster, rng: random.Random) -> HostedNode:
    leader = cluster.current_leader()
    return rng.choice([n for n in cluster.running() if n is not leader] or cluster.running())


def isolate_leader(cluster: FaultCluster, rng: random.Random) -> str:
    node = _leader_or_any(cluster, rng)
    cluster.network.isolate(node.name)
    return f"isolate leader {node.name}"


def isolate_follower(cluster: FaultCluster, rng: random.Random) -> str:
    node = _follower(cluster, rng)
    cluster.network.isolate(node.name)
    return f"isolate follower {node.name}"


def majority_minority(cluster: FaultCluster, rng: random.Random) -> str:
    """A random split into a majority and a minority; the leader lands on either side."""
    names = cluster.names()
    rng.shuffle(names)
    minority = names[: (len(names) - 1) // 2]
    majority = names[len(minority) :]
    cluster.network.partition(minority, majority)
    return f"partition {minority} | {majority}"


def bridge(cluster: FaultCluster, rng: random.Random) -> str:
    """Two halves that cannot hear each other, and one node that hears both (Jepsen's
    bridge): with 3 nodes, the middle one is a single node between two singletons."""
    names = cluster.names()
    rng.shuffle(names)
    middle = names[0]
    rest = names[1:]
    half = len(rest) // 2
    cluster.network.partition(rest[:half], rest[half:])
    return f"bridge {rest[:half]} <- {middle} -> {rest[half:]}"


def leader_deaf(cluster: FaultCluster, rng: random.Random) -> str:
    """One direction lost: the leader's heartbeats still arrive, but it hears no answers."""
    leader = _leader_or_any(cluster, rng)
    for other in cluster.names():
        if other != leader.name:
            cluster.network.cut(other, leader.name)
    return f"{leader.name} (leader) hears nobody; everyone hears it"


def leader_mute(cluster: FaultCluster, rng: random.Random) -> str:
    """The other direction: the leader hears everyone, nobody hears the leader."""
    leader = _leader_or_any(cluster, rng)
    for other in cluster.names():
        if other != leader.name:
            cluster.network.cut(leader.name, other)
    return f"nobody hears {leader.name} (leader); it hears everyone"


def one_way_follower(cluster: FaultCluster, rng: random.Random) -> str:
    node = _follower(cluster, rng)
    leader = _leader_or_any(cluster, rng)
    cluster.network.cut(leader.name, node.name)
    return f"{node.name} no longer hears {leader.name}"


def lossy(cluster: FaultCluster, rng: random.Random) -> str:
    percent = rng.choice((20, 40))
    for name in cluster.names():
        cluster.network.lossy(name, percent)
    return f"every link loses {percent}% of its packets"


def duplicating(cluster: FaultCluster, rng: random.Random) -> str:
    for name in cluster.names():
        cluster.network.duplicating(name)
    return "every packet between nodes sent twice"


def congested(cluster: FaultCluster, rng: random.Random) -> str:
    """The leader's link (or every link) slow and queueing: delays of up to a second that
    grow with the load, heartbeats stuck behind appends."""
    names = [_leader_or_any(cluster, rng).name] if rng.random() < 0.5 else cluster.names()
    for name in names:
        cluster.network.congested(name)
    return f"congested links out of {names} (64 kbit/s, queue up to 1 s)"


def kill_leader(cluster: FaultCluster, rng: random.Random) -> str:
    node = _leader_or_any(cluster, rng)
    node.kill()
    return f"kill -9 {node.name} (leader)"


def kill_any(cluster: FaultCluster, rng: random.Random) -> str:
    node = rng.choice(cluster.running())
    node.kill()
    return f"kill -9 {node.name}"


def pause_leader(cluster: FaultCluster, rng: random.Random) -> str:
    node = _leader_or_any(cluster, rng)
    node.pause()
    return f"SIGSTOP {node.name} (leader)"


def pause_any(cluster: FaultCluster, rng: random.Random) -> str:
    node = rng.choice(cluster.running())
    node.pause()
    return f"SIGSTOP {node.name}"


FAULTS: dict[str, Fault] = {
    "isolate_leader": isolate_leader,
    "isolate_follower": isolate_follower,
    "majority_minority": majority_minority,
    "bridge": bridge,
    "leader_deaf": leader_deaf,
    "leader_mute": leader_mute,
    "one_way_follower": one_way_follower,
    "lossy": lossy,
    "duplicating": duplicating,
    "congested": congested,
    "kill_leader": kill_leader,
    "kill_any": kill_any,
    "pause_leader": pause_leader,
    "pause_any": pause_any,
}


def heal(cluster: FaultCluster) -> str:
    cluster.heal_everything()
    return "heal"
