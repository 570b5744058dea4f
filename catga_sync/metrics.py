"""Prometheus metrics of a node (extra ``metrics``: ``pip install catga-sync[metrics]``).

Names follow Prometheus conventions: ``catga_`` prefix, ``_total`` for counters, base units
(``_seconds``, ``_bytes``), histograms for latencies. Counters and histograms come from one
table each: the fields of the node's :class:`~catga_sync.runtime.NodeStats` and of each
extension's ``counters()``, with their help text (:func:`~catga_sync.runtime.counter`,
:func:`~catga_sync.runtime.measures.labeled_counter`,
:func:`~catga_sync.runtime.measures.histogram`). ``docs/metrics.rst`` lists every metric.

:class:`NodeCollector` reads everything at scrape time; register it in an application's own
registry (``prometheus_client.REGISTRY.register(NodeCollector(node))``) or let ``GET /metrics``
serve it (:func:`render`), with the standard ``process_*`` and ``python_*`` collectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .raft import Role
from .runtime.measures import measures_of
from .runtime.status import counters_of

if TYPE_CHECKING:
    from .runtime.extension import NodeHandle

__all__ = ["NodeCollector", "available", "render", "standard_collectors"]

SIZES_TIMEOUT = 0.5
"""Seconds a scrape waits for the Raft loop to measure the log (a busy or stuck loop: the log
and snapshot sizes are left out of that scrape, the rest is served)."""


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class NodeCollector:
    """A prometheus_client collector reading a node's status, counters and histograms at
    scrape time. Every sample is labelled ``node_id``."""

    def __init__(self, node: NodeHandle) -> None:
        self._node = node

    def describe(self) -> list[Any]:
        # Nothing to describe up front: registering does not scrape the node (it may not run).
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        node = self._node
        labels = ["node_id"]
        values = [node.node_id]
        stats_objects: list[object] = [node.stats]
        for extension in node.extensions.values():
            stats = extension.counters()
            if stats is not None:
                stats_objects.append(stats)
        for stats in stats_objects:
            for name, help_text, value in counters_of(stats):
                family = CounterMetricFamily(f"catga_{name}", help_text, labels=labels)
                family.add_metric(values, value)
                yield family
            for name, help_text, kind, label, measure in measures_of(stats):
                metric_labels = labels if label is None else [*labels, label]
                series = [(None, measure)] if label is None else measure.items()
                measured: Any = (
                    CounterMetricFamily if kind == "counter" else HistogramMetricFamily
                )(f"catga_{name}", help_text, labels=metric_labels)
                for key, observed in series:
                    sample_labels = values if key is None else [*values, key]
                    if kind == "counter":
                        measured.add_metric(sample_labels, observed)
                    else:
                        buckets, total = observed.snapshot()
                        measured.add_metric(sample_labels, buckets, total)
                yield measured
        yield from self._gauges(GaugeMetricFamily, labels, values)
        transport_stats = getattr(node.transport, "stats", None)
        if callable(transport_stats):
            failures = CounterMetricFamily(
                "catga_peer_send_failures",
                "Messages to a peer whose batch failed (heartbeats included)",
                labels=[*labels, "peer"],
            )
            frames = GaugeMetricFamily(
                "catga_peer_frames",
                "1 while the batches to a peer travel as frames on one open request",
                labels=[*labels, "peer"],
            )
            for peer, peer_stats in transport_stats().items():
                failures.add_metric([*values, peer], peer_stats.get("failed", 0))
                frames.add_metric([*values, peer], int(peer_stats.get("frames") == "working"))
            yield failures
            yield frames

    def _gauges(self, gauge_family: Any, labels: list[str], values: list[str]) -> Iterator[Any]:
        node = self._node
        status = node.status
        gauges: dict[str, tuple[str, float | None]] = {
            "catga_term": ("Current Raft term", status.term),
            "catga_is_leader": ("1 when this node is the leader", int(status.is_leader)),
            "catga_has_leader": (
                "1 when this node knows a leader (itself included)",
                int(status.running and status.leader_raft_id is not None),
            ),
            "catga_leading_term": (
                "The term this node leads in (no sample while it does not lead)",
                status.leading_term,
            ),
            "catga_commit_index": ("Highest log index known committed", status.commit_index),
            "catga_applied_index": ("Highest log index applied", status.last_applied),
            "catga_members": ("Voting members", len(status.members)),
            "catga_up": ("1 while the node runs", int(status.running)),
        }
        sizes = self._log_sizes()
        if sizes is not None:
            entries, data, snapshot = sizes
            gauges["catga_log_entries"] = ("Raft log entries held (after the snapshot)", entries)
            gauges["catga_log_bytes"] = ("Bytes of data of the log entries held", data)
            gauges["catga_snapshot_bytes"] = ("Bytes of the latest snapshot (0: none)", snapshot)
        state_size = getattr(node, "state_size_bytes", None)
        size = state_size() if callable(state_size) else None
        gauges["catga_state_size_bytes"] = (
            "Bytes the node's Raft state takes on disk (SQLite files; no sample for memory "
            "or a database server)",
            size,
        )
        for name, (help_text, value) in gauges.items():
            gauge = gauge_family(name, help_text, labels=labels)
            if value is not None:
                gauge.add_metric(values, value)
            yield gauge
        role = gauge_family("catga_role", "1 for the node's current role", labels=[*labels, "role"])
        for each in Role:
            role.add_metric([*values, each.value], int(status.role is each))
        yield role

    def _log_sizes(self) -> tuple[int, int, int] | None:
        node = self._node
        log_sizes = getattr(node, "log_sizes", None)
        if not callable(log_sizes) or not node.running:
            return None
        try:
            sizes: tuple[int, int, int] = log_sizes(timeout=SIZES_TIMEOUT)
        except Exception:  # stopped meanwhile, or the loop is busy: leave them out this time
            return None
        return sizes


def standard_collectors() -> list[Any]:
    """prometheus_client's ``process_*`` and ``python_*`` collectors (its own instances, those
    of its default registry), which :func:`render` serves beside the node's metrics."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    return [PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR]


def render(node: NodeHandle, *, standard: bool = True) -> tuple[bytes, str]:
    """The text exposition of ``node``'s metrics (and, with ``standard``, the process and
    Python collectors) and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))  # type: ignore[arg-type]
    if standard:
        for collector in standard_collectors():
            registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
