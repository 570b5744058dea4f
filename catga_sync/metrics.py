"""Prometheus metrics of a node (extra ``metrics``: ``pip install catga-sync[metrics]``).

Names follow Prometheus conventions: ``catga_`` prefix, ``_total`` for counters, base units.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .raft import Role

if TYPE_CHECKING:
    from .node import ClusterNode

_COUNTERS = (
    ("elections", "Elections this node started as a candidate"),
    ("leader_changes", "Times this node saw a new leader"),
    ("ticks", "Raft ticks run"),
    ("late_ticks", "Ticks that ran late because the tick job or the loop was delayed"),
    ("skipped_jobs", "Tick jobs APScheduler skipped or missed"),
    ("readies", "Batches of Raft work handled (one storage transaction each)"),
    ("entries_persisted", "Log entries written to storage"),
    ("bytes_persisted", "Bytes of log entry data written to storage"),
    (
        "commit_only_writes_unsynced",
        "Readies whose only durable change, the commit index, was written without an fsync",
    ),
    ("inline_replies", "Messages answered in the response to a peer's request"),
    ("commit_notices_parked", "Commit notices held back for an AppendEntries to carry"),
    ("commit_notices_saved", "Held-back commit notices made redundant by an AppendEntries"),
    ("messages_sent", "Raft messages handed to the transport"),
    ("messages_received", "Raft messages received from peers"),
    ("invalid_messages", "Peer messages the core refused"),
    ("singleton_task_starts", "Singleton task runs started on this node"),
    ("singleton_task_stops", "Singleton task runs that ended"),
    ("singleton_task_restarts", "Singleton task runs started again after a failure"),
    ("singleton_task_failures", "Singleton task runs that raised"),
    ("singleton_task_stuck", "Singleton task runs that ignored the stop past stop_timeout"),
    ("leader_job_runs", "Leader-gated job runs started on this node"),
    ("leader_job_misses", "Due fire times of gated jobs coalesced, dropped or not confirmed"),
    ("leader_job_failures", "Leader-gated job runs that raised"),
    ("leader_job_skips", "Gated job fires skipped because the log shows them completed"),
)


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class NodeCollector:
    """A prometheus_client collector reading a node's status and counters at scrape time."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self._node
        status = node.status
        labels = ["node_id"]
        values = [node.node_id]
        stats = node.stats
        for name, help_text in _COUNTERS:
            family = CounterMetricFamily(f"catga_{name}", help_text, labels=labels)
            family.add_metric(values, getattr(stats, name))
            yield family
        gauges = {
            "catga_term": ("Current Raft term", status.term),
            "catga_is_leader": ("1 when this node is the leader", int(status.is_leader)),
            "catga_commit_index": ("Highest log index known committed", status.commit_index),
            "catga_applied_index": ("Highest log index applied", status.last_applied),
            "catga_members": ("Voting members", len(status.members)),
            "catga_up": ("1 while the node runs", int(status.running)),
        }
        for name, (help_text, value) in gauges.items():
            gauge = GaugeMetricFamily(name, help_text, labels=labels)
            gauge.add_metric(values, value)
            yield gauge
        role = GaugeMetricFamily(
            "catga_role", "1 for the node's current role", labels=[*labels, "role"]
        )
        for each in Role:
            role.add_metric([*values, each.value], int(status.role is each))
        yield role
        transport_stats = getattr(node.transport, "stats", None)
        if callable(transport_stats):
            failures = CounterMetricFamily(
                "catga_peer_send_failures",
                "Batches to a peer that failed (heartbeat failures included)",
                labels=[*labels, "peer"],
            )
            latency = GaugeMetricFamily(
                "catga_peer_rpc_latency_seconds",
                "Latency of the last batch to a peer",
                labels=[*labels, "peer"],
            )
            for peer, peer_stats in transport_stats().items():
                failures.add_metric([*values, peer], peer_stats.get("failed", 0))
                latency.add_metric([*values, peer], peer_stats.get("last_latency", 0.0))
            yield failures
            yield latency


def render(node: ClusterNode) -> tuple[bytes, str]:
    """The text exposition of ``node``'s metrics and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
