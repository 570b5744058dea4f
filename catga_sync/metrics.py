"""Prometheus metrics of a node (extra ``metrics``: ``pip install catga-sync[metrics]``).

Names follow Prometheus conventions: ``catga_`` prefix, ``_total`` for counters, base units.
Counters come from one table each: the fields of the node's :class:`~catga_sync.runtime.NodeStats`
and of each extension's ``counters()``, with their help text (:func:`~catga_sync.runtime.counter`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .raft import Role
from .runtime.status import counters_of

if TYPE_CHECKING:
    from .runtime.extension import NodeHandle


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class NodeCollector:
    """A prometheus_client collector reading a node's status and counters at scrape time."""

    def __init__(self, node: NodeHandle) -> None:
        self._node = node

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self._node
        status = node.status
        labels = ["node_id"]
        values = [node.node_id]
        counters = counters_of(node.stats)
        for extension in node.extensions.values():
            stats = extension.counters()
            if stats is not None:
                counters.extend(counters_of(stats))
        for name, help_text, value in counters:
            family = CounterMetricFamily(f"catga_{name}", help_text, labels=labels)
            family.add_metric(values, value)
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


def render(node: NodeHandle) -> tuple[bytes, str]:
    """The text exposition of ``node``'s metrics and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
