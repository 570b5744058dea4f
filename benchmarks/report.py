"""What the side-by-side benchmarks print around their figures, and the picture of ``--plot``.

The machine (CPU model, cores, RAM, kernel, Python), the command line, the load average before
and after, the ratio lines ``catga_sync / etcd`` and ``catga_sync / PySyncObj``, and a PNG of
latency distributions and throughput against client threads. matplotlib is imported only by
:func:`plot` (``pip install -e .[bench]``): it is not a dependency of catga_sync.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import signal
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from etcd_cluster import INSTALL_HINT, SNAPSHOT_COUNT, etcd_version

T = TypeVar("T")

SWEEP_THREADS = (1, 2, 4, 8, 16)
# First match wins: catga_sync over HTTP gets a colour of its own.
COLOURS = {
    "catga_sync POST": "#17becf",
    "catga_sync": "#1f77b4",
    "etcd": "#2ca02c",
    "PySyncObj": "#ff7f0e",
}
MATPLOTLIB_MISSING = (
    "--plot needs matplotlib: pip install -e '.[bench]' (or: pip install matplotlib)"
)


def _proc_field(path: str, name: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"


def machine_line() -> str:
    """``machine: AMD EPYC, 2 cores, 23.4 GiB RAM, Linux 6.1.0 x86_64, Python 3.11.7``."""
    mem = _proc_field("/proc/meminfo", "MemTotal")
    ram = f"{int(mem.split()[0]) / 2**20:.1f} GiB RAM" if mem else "RAM unknown"
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {ram}, {platform.system()} "
        f"{platform.release()} {platform.machine()}, Python {platform.python_version()}"
    )


def short_machine() -> str:
    """``AMD EPYC, 2 cores``, for a picture's title."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def version_of(distribution: str) -> str:
    """The installed version of ``distribution``, or ``?``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {when}: {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min)"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as one would type it again."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    with_root = script.resolve().parent.parent
    try:
        shown = str(script.resolve().relative_to(with_root))
    except ValueError:
        shown = str(script)
    return "command: " + shlex.join(["python", shown, *argv[1:]])


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def ratio_line(
    what: str, ours: float | None, theirs: float | None, kind: str, aim: float | None = None
) -> str:
    """One ratio line; ``kind`` is ``latency`` (< 1 is faster) or ``throughput`` (> 1), and
    ``aim`` the issue's bound on the ratio (at most, for a latency; at least, for a rate)."""
    meaning = {"latency": "latency: < 1 is faster", "throughput": "throughput: > 1 is faster"}
    value = ratio(ours, theirs)
    shown = "n/a" if value is None else f"{value:.2f}"
    target = ""
    if aim is not None:
        bound = "<=" if kind == "latency" else ">="
        met = value is not None and (value <= aim if kind == "latency" else value >= aim)
        target = f"; aim {bound} {aim:.1f}: {'met' if met else 'not met'}"
    return f"  {what}: {shown} ({meaning[kind]}{target})"


def growth(values: Sequence[float]) -> str:
    """``1.00x / 1.25x / 2.10x``: each value as a multiple of the first."""
    first = values[0] if values else 0
    return " / ".join(f"{v / first:.2f}x" if first else "n/a" for v in values)


@dataclass(frozen=True, slots=True)
class Comparison:
    """A figure of catga_sync set against one of another system: ``ours / theirs``."""

    what: str
    ours: float | None
    theirs: float | None
    kind: str  # "latency" or "throughput"
    aim: float | None = None


def ratio_block(other: str, comparisons: Sequence[Comparison]) -> list[str]:
    """The ``catga_sync / OTHER`` heading and its lines; nothing when no figure compares."""
    lines = [
        ratio_line(c.what, c.ours, c.theirs, c.kind, c.aim)
        for c in comparisons
        if c.ours is not None and c.theirs is not None
    ]
    return [f"catga_sync / {other}", *lines] if lines else []


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the clusters' ``finally`` blocks stop their processes."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def etcd_phase(etcd: str, clients: str, bench: Callable[[], T | str]) -> T | None:
    """Run ``bench`` (which starts its etcd cluster) if ``etcd`` runs here, with a line that
    says what is measured (``clients``), or a line that says why not; its figures or None."""
    version = etcd_version(etcd)
    if version is None:
        print(f"\netcd: skipped, cannot run {etcd!r} (to install it: {INSTALL_HINT})")
        return None
    print(
        f"\netcd {version}: 3 processes, defaults (fsync per write), --snapshot-count "
        f"{SNAPSHOT_COUNT}; {clients}"
    )
    result = bench()
    if isinstance(result, str):
        print(f"etcd: {result}")
        return None
    return result


def plot_title(script: str, measured: Collection[str], etcd: str, runs: int) -> str:
    """``locks.py: catga_sync, etcd 3.4.23, PySyncObj 0.3.17; AMD EPYC, 2 cores; ...``."""
    systems = ", ".join(
        name
        for key, name in (
            ("catga", "catga_sync"),
            ("etcd", f"etcd {etcd_version(etcd)}"),
            ("pysyncobj", f"PySyncObj {version_of('pysyncobj')}"),
        )
        if key in measured
    )
    return f"{script}: {systems}; {short_machine()}; runs per figure: {runs}"


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def colour(label: str) -> str:
    for system, value in COLOURS.items():
        if label.startswith(system):
            return value
    return "#9467bd"


def _two_lines(label: str) -> str:
    """``catga_sync POST /orders, leader`` as a tick label: the system, then the rest."""
    system, _, where = label.partition(", ")
    first, _, rest = system.partition(" ")
    return "\n".join(part for part in (first, rest, where) if part)


def plot(
    path: str,
    title: str,
    latencies: Mapping[str, Sequence[float]],
    latency_title: str,
    sweep: Mapping[str, Mapping[int, float]],
    sweep_title: str,
    sweep_unit: str,
) -> None:
    """A PNG: box plots of per-operation latencies (seconds) by label on the left, and
    operations per second against client threads on the right, one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy  # matplotlib's own dependency

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), width_ratios=(1.35, 1))
    labels = [label for label, values in latencies.items() if values]
    data = [[x * 1e3 for x in latencies[label]] for label in labels]
    boxes = left.boxplot(
        data, whis=(1, 99), showfliers=False, patch_artist=True, medianprops={"color": "black"}
    )
    for patch, label in zip(boxes["boxes"], labels, strict=True):
        patch.set_facecolor(colour(label))
        patch.set_alpha(0.55)
    tops, bottoms = [], []
    for k, values in enumerate(data, start=1):
        bottom, median, top = numpy.percentile(values, (1, 50, 99))  # as the whiskers
        tops.append(top)
        bottoms.append(bottom)
        left.annotate(
            f"{median:.2f}",
            (k, tops[-1]),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    left.set_xticks(range(1, len(labels) + 1), [_two_lines(label) for label in labels])
    left.tick_params(axis="x", labelsize=7.5)
    left.set_ylabel("ms per operation (log scale)")
    left.set_yscale("log")
    ticks = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    left.set_yticks(ticks, [f"{t:g}" for t in ticks])
    left.minorticks_off()
    if data:
        left.set_ylim(min(bottoms) * 0.8, max(tops) * 1.6)
    left.set_title(latency_title, fontsize=10)
    left.grid(axis="y", alpha=0.3)
    for label, points in sweep.items():
        if not points:
            continue
        threads = sorted(points)
        right.plot(
            threads,
            [points[n] for n in threads],
            marker="o",
            label=label,
            color=colour(label),
            linestyle="--" if "POST" in label else "-",
        )
    right.set_xscale("log", base=2)
    right.set_xticks(list(SWEEP_THREADS), [str(n) for n in SWEEP_THREADS])
    right.set_xlabel("client threads")
    right.set_ylabel(sweep_unit)
    right.set_ylim(bottom=0)
    right.set_title(sweep_title, fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    save(figure, title, path)


def save(figure: Any, title: str, path: str) -> None:
    """Title ``figure``, write it to ``path`` as a PNG and free it."""
    import matplotlib.pyplot as plt

    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
