"""Small metric primitives for the stats dataclasses: histograms and counters by one label.

A stats dataclass (:class:`~catga_sync.runtime.NodeStats`, an extension's ``counters()``)
declares each metric as a field, with its help text, so that nothing can be measured and
never exported: :func:`~catga_sync.runtime.counter` for a plain counter,
:func:`labeled_counter` for a counter by one label (``peer``, ``outcome``), :func:`histogram`
for a latency histogram (optionally by one label). ``/metrics`` reads them at scrape time
(:mod:`catga_sync.metrics`) and needs no ``prometheus_client`` to count.

Cheap on the hot path: an observation is one bisect and one uncontended lock; nothing is
allocated per observation once a label has been seen.
"""

from __future__ import annotations

import dataclasses
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import field
from typing import Any

__all__ = [
    "LATENCY_BUCKETS",
    "Histogram",
    "LabeledCounters",
    "LabeledHistograms",
    "histogram",
    "labeled_counter",
    "measures_of",
    "rpc_observer",
]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the latency histograms: half a millisecond to ten seconds."""


class Histogram:
    """Observations counted in :data:`LATENCY_BUCKETS` (cumulative at export, Prometheus
    ``le`` semantics: a value equal to a bound falls in that bucket)."""

    __slots__ = ("_lock", "bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        k = bisect_left(self.bounds, value)
        with self._lock:
            self.counts[k] += 1
            self.total += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """``([(le, cumulative count)...], sum)``, ``+Inf`` last."""
        with self._lock:
            counts, total = list(self.counts), self.total
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets, total

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self.counts)


class LabeledCounters:
    """Counters by the value of one label."""

    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()

    def inc(self, label: str, amount: int = 1) -> None:
        with self._lock:
            self._values[label] = self._values.get(label, 0) + amount

    def get(self, label: str) -> int:
        with self._lock:
            return self._values.get(label, 0)

    def items(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._values.items())


class LabeledHistograms:
    """One :class:`Histogram` per value of one label."""

    __slots__ = ("_histograms", "_lock")

    def __init__(self) -> None:
        self._histograms: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    def observe(self, label: str, value: float) -> None:
        found = self._histograms.get(label)
        if found is None:
            with self._lock:
                found = self._histograms.setdefault(label, Histogram())
        found.observe(value)

    def items(self) -> list[tuple[str, Histogram]]:
        with self._lock:
            return sorted(self._histograms.items())


def labeled_counter(help_text: str, label: str) -> Any:
    """A field counting by ``label``: metric ``catga_<field name>_total{<label>=...}``."""
    return field(
        default_factory=LabeledCounters,
        metadata={"help": help_text, "kind": "counter", "label": label},
    )


def histogram(help_text: str, label: str | None = None) -> Any:
    """A latency histogram field (seconds; the field's name ends in ``_seconds``): metric
    ``catga_<field name>``, by ``label`` when one is given."""
    return field(
        default_factory=Histogram if label is None else LabeledHistograms,
        metadata={"help": help_text, "kind": "histogram", "label": label},
    )


def measures_of(stats: object) -> Iterator[tuple[str, str, str, str | None, Any]]:
    """``(name, help, kind, label, value)`` of every :func:`labeled_counter` and
    :func:`histogram` field of the dataclass ``stats``."""
    for f in dataclasses.fields(stats):  # type: ignore[arg-type]
        kind = f.metadata.get("kind")
        if kind is not None:
            yield f.name, f.metadata["help"], kind, f.metadata["label"], getattr(stats, f.name)


def rpc_observer(stats: Any, leading: Callable[[], bool]) -> Callable[[str, float, bool], None]:
    """The HTTP transport's observer (one call per POST, on the peer's sender thread): the
    latency of every peer RPC, and, while this node leads, its heartbeats (each replication
    POST to a follower: heartbeats and AppendEntries) and their failures, per peer."""
    latency: LabeledHistograms = stats.peer_rpc_latency_seconds
    sent: LabeledCounters = stats.heartbeats_sent
    failed: LabeledCounters = stats.heartbeat_failures

    def observe(peer: str, seconds: float, ok: bool) -> None:
        latency.observe(peer, seconds)
        if leading():
            sent.inc(peer)
            if not ok:
                failed.inc(peer)

    return observe
