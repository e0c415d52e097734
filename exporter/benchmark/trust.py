"""Whether a latency figure can be trusted: the machine's load, each timing's spread, and a thread probe.

On a busy machine a speedup mostly measures contention: eager PyTorch with 2 threads once took 72.6 ms
where 1 thread took 6.3 ms, and the report printed ONNX Runtime as 119.7x faster. The benchmark stage
gathers cheap facts beside its timing (the 1-minute load average before and after, this process's own CPU
use, a short eager probe at 1 thread vs the configured threads at each batch size), ``assess_timing`` turns
them and the timings' spread into reason-coded warnings, and the report prints them next to the figures
they affect: a speedup whose figure or eager baseline is flagged reads "not trustworthy", not a bare ratio.

Thresholds (also in the README's benchmark section):

- ``busy-machine``: other work's load (the higher 1-minute load average of before and after timing, less
  the cores this process itself kept busy while timing) plus the threads timed (at most the usable CPUs)
  is more than ``BUSY_LOAD_RATIO`` (1.5) x the usable CPUs. The load average counts this run too, hence the
  subtraction; on 2 CPUs with 2 threads it fires once other work keeps more than one core busy.
- ``threads-over-cpus``: more threads asked for than CPUs this process may run on.
- ``wide-spread``: a timing's p90 is more than ``SPREAD_LIMIT`` (2.0) x its p50 (calls of one model on one
  input differ that much only when something else takes the cores now and then).
- ``threads-slower``: eager PyTorch at a batch size with the configured threads has a p50 more than
  ``THREADS_SLOWER_RATIO`` (1.5) x its p50 with 1 thread: the threads wait for cores, or the model is too
  small to split. Probed at every batch size: on a busy 2-core machine a tiny MLP took 0.028 ms with
  either thread count at batch 1 and 38 ms with 2 threads (0.028 ms with 1) at batch 2.

Imports neither torch nor the runners: the renderers use the report-dict helpers at the bottom.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.benchmark.latency import LatencyStats

__all__ = [
    "BUSY_LOAD_RATIO",
    "SPREAD_LIMIT",
    "THREADS_SLOWER_RATIO",
    "UNTRUSTED_NOTE",
    "LoadWatch",
    "MachineLoad",
    "ThreadProbe",
    "TimingIssue",
    "TimingQuality",
    "TimingWarning",
    "assess_timing",
    "busy_machine",
    "figure_flags",
    "markdown_lines",
    "matrix_speedup",
    "probe_sentence",
    "speedup_cell",
    "speedup_flags",
    "timing_cell",
    "timing_sentences",
    "warning_sentences",
]

BUSY_LOAD_RATIO = 1.5
SPREAD_LIMIT = 2.0
THREADS_SLOWER_RATIO = 1.5


class TimingIssue(StrEnum):
    """Why a figure is not trustworthy; the value is the code printed next to it."""

    BUSY_MACHINE = "busy-machine"
    THREADS_OVER_CPUS = "threads-over-cpus"
    WIDE_SPREAD = "wide-spread"
    THREADS_SLOWER = "threads-slower"


@dataclass(frozen=True)
class TimingWarning:
    """One reason not to trust some figures: those of ``backend`` at ``label`` (None: every one)."""

    code: TimingIssue
    message: str
    backend: str | None = None
    label: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code.value,
            "backend": self.backend,
            "label": self.label,
            "message": self.message,
        }


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity API (macOS)
        return os.cpu_count() or 1


@dataclass(frozen=True)
class MachineLoad:
    """The 1-minute load average around a timing, and how many cores this process used meanwhile."""

    usable_cpus: int
    load_before: float | None
    load_after: float | None
    own_cpus: float | None = None
    """CPU seconds of this process (all its threads) per wall second while timing."""

    @property
    def outside(self) -> float | None:
        """Load from other work: the higher reading less this process's own cores (never below 0)."""
        loads = [v for v in (self.load_before, self.load_after) if v is not None]
        if not loads:
            return None
        return max(0.0, max(loads) - (self.own_cpus or 0.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "usable_cpus": self.usable_cpus,
            "load_before": _round(self.load_before),
            "load_after": _round(self.load_after),
            "own_cpus": _round(self.own_cpus),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class LoadWatch:
    """``with LoadWatch() as watch:`` around a timing; ``watch.load`` is the ``MachineLoad`` after it."""

    def __init__(self) -> None:
        self.load = MachineLoad(_usable_cpus(), None, None)  # read when the block starts and ends
        self._cpu, self._wall = 0.0, 0.0

    def __enter__(self) -> LoadWatch:
        self.load = MachineLoad(_usable_cpus(), _load_average(), None)
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        wall = time.perf_counter() - self._wall
        own = (time.process_time() - self._cpu) / wall if wall > 0 else None
        self.load = replace(self.load, load_after=_load_average(), own_cpus=own)


@dataclass(frozen=True)
class ThreadProbe:
    """A short eager timing at 1 thread against the configured threads, in alternating blocks."""

    backend: str
    label: str
    threads: int
    one_thread_ms: float
    threads_ms: float

    @property
    def ratio(self) -> float:
        """p50 with the configured threads over p50 with 1 thread (above 1: more threads were slower)."""
        return self.threads_ms / self.one_thread_ms if self.one_thread_ms > 0 else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "label": self.label,
            "threads": self.threads,
            "one_thread_p50_ms": self.one_thread_ms,
            "threads_p50_ms": self.threads_ms,
            "faster": "1 thread" if self.ratio > 1 else f"{self.threads} threads",
        }


@dataclass(frozen=True)
class TimingQuality:
    """The facts measured beside a benchmark and the warnings they raise (empty: nothing found)."""

    baseline: str
    threads: int
    load: MachineLoad
    probes: tuple[ThreadProbe, ...] = ()
    warnings: tuple[TimingWarning, ...] = ()

    def restricted_to(self, backends: Iterable[str]) -> TimingQuality:
        """Without the warnings about backends whose rows were dropped after timing."""
        kept = set(backends)
        warnings = tuple(w for w in self.warnings if w.backend is None or w.backend in kept)
        return replace(self, warnings=warnings)

    def describe(self) -> str:
        """For the stage line: '' when clean, else '; timing not trustworthy: codes'."""
        codes = list(dict.fromkeys(w.code.value for w in self.warnings))
        return f"; timing not trustworthy: {', '.join(codes)}" if codes else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "threads": self.threads,
            **self.load.to_json(),
            "probes": [p.to_json() for p in self.probes],
            "thresholds": {
                "busy_load_ratio": BUSY_LOAD_RATIO,
                "spread_p90_over_p50": SPREAD_LIMIT,
                "threads_slower_ratio": THREADS_SLOWER_RATIO,
            },
            "warnings": [w.to_json() for w in self.warnings],
        }


def busy_machine(load: MachineLoad, threads: int) -> list[TimingWarning]:
    """The machine-wide warnings: other work wanted the cores, or more threads than CPUs were asked for."""
    warnings = []
    outside = load.outside
    wanted = min(threads, load.usable_cpus)  # more threads than CPUs is the warning below, not this one
    if outside is not None and outside + wanted > BUSY_LOAD_RATIO * load.usable_cpus:
        readings = "/".join(f"{v:.2f}" for v in (load.load_before, load.load_after) if v is not None)
        own = f", {load.own_cpus:.2f} of it this run's" if load.own_cpus is not None else ""
        warnings.append(
            TimingWarning(
                TimingIssue.BUSY_MACHINE,
                f"busy machine: 1-minute load average {readings} (before/after timing{own}) on "
                f"{load.usable_cpus} usable CPUs; other work ({outside:.2f}) plus the {threads} threads "
                f"timed want more than {BUSY_LOAD_RATIO:g}x the CPUs, so every figure includes waiting for "
                "a core",
            )
        )
    if threads > load.usable_cpus:
        warnings.append(
            TimingWarning(
                TimingIssue.THREADS_OVER_CPUS,
                f"{threads} threads timed on {load.usable_cpus} usable CPUs: the threads take turns on the "
                "cores (oversubscribed); pass --threads at most the usable CPUs",
            )
        )
    return warnings


def _spread(stats: LatencyStats) -> TimingWarning | None:
    if stats.p50_ms <= 0 or stats.p90_ms / stats.p50_ms <= SPREAD_LIMIT:
        return None
    return TimingWarning(
        TimingIssue.WIDE_SPREAD,
        f"{stats.backend} at {stats.label}: p90 {stats.p90_ms:.3g} ms is {stats.p90_ms / stats.p50_ms:.1f}x "
        f"its p50 {stats.p50_ms:.3g} ms (over {SPREAD_LIMIT:g}x): the calls were disturbed",
        stats.backend,
        stats.label,
    )


def _threads_slower(probe: ThreadProbe) -> TimingWarning | None:
    if probe.ratio <= THREADS_SLOWER_RATIO:
        return None
    return TimingWarning(
        TimingIssue.THREADS_SLOWER,
        f"{probe.backend} at {probe.label}: {probe.threads} threads took {probe.threads_ms:.3g} ms, "
        f"1 thread {probe.one_thread_ms:.3g} ms ({probe.ratio:.1f}x slower, over "
        f"{THREADS_SLOWER_RATIO:g}x): the threads wait for busy cores, or the model is too small to split "
        "(try --threads 1); every speedup against this baseline mostly measures that",
        probe.backend,
        probe.label,
    )


def assess_timing(
    latency: Sequence[LatencyStats],
    *,
    baseline: str,
    threads: int,
    load: MachineLoad,
    probes: Sequence[ThreadProbe] = (),
) -> TimingQuality:
    """Every warning the facts raise: machine-wide, then the thread probes, then each timing's spread."""
    warnings = busy_machine(load, threads)
    warnings += [w for w in map(_threads_slower, probes) if w is not None]
    warnings += [w for w in map(_spread, latency) if w is not None]
    return TimingQuality(baseline, threads, load, tuple(probes), tuple(warnings))


# ---- report.json dict helpers, for report.md, report.html and the terminal --------------------------------


def _warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    quality = report.get("timing_quality") or {}  # absent from reports written before it was measured
    return list(quality.get("warnings") or [])


def _affects(warning: dict[str, Any], backend: str, label: str) -> bool:
    return warning.get("backend") in (None, backend) and warning.get("label") in (None, label)


def figure_flags(report: dict[str, Any], backend: str, label: str) -> list[str]:
    """Codes of the warnings on ``backend``'s own figures at ``label`` (none: trustworthy or not assessed)."""
    return list(dict.fromkeys(w["code"] for w in _warnings(report) if _affects(w, backend, label)))


def speedup_flags(report: dict[str, Any], backend: str, label: str) -> list[str]:
    """Codes of the warnings on a speedup: its own figure's and its baseline's at the same label."""
    baseline = (report.get("timing_quality") or {}).get("baseline")
    flags = figure_flags(report, backend, label)
    if baseline:
        flags += figure_flags(report, baseline, label)
    return list(dict.fromkeys(flags))


def probe_sentence(report: dict[str, Any]) -> str | None:
    """Which thread count the probe found faster at each batch size, with both p50s (None: not probed)."""
    probes = (report.get("timing_quality") or {}).get("probes") or []
    if not probes:
        return None
    parts = []
    for probe in probes:
        one, many = probe["one_thread_p50_ms"], probe["threads_p50_ms"]
        ratio = max(one, many) / min(one, many) if min(one, many) > 0 else 1.0
        parts.append(
            f"{probe['label']} {one:.3g} ms with 1 thread, {many:.3g} ms with {probe['threads']}: "
            f"{probe['faster']} {ratio:.2f}x faster"
        )
    return f"Thread probe ({probes[0]['backend']}, p50): {'; '.join(parts)}."


UNTRUSTED_NOTE = "Figures and speedups these warnings touch are marked 'not trustworthy'."


def warning_sentences(report: dict[str, Any]) -> list[str]:
    """One sentence per timing warning, led by its code."""
    return [f"Timing not trustworthy ({w['code']}): {w['message']}." for w in _warnings(report)]


def speedup_cell(report: dict[str, Any], stats: dict[str, Any]) -> str:
    """``1.50x``, or ``1.50x (not trustworthy)`` when the figure or its eager baseline is flagged."""
    if stats["speedup_vs_eager"] is None:
        return "-"
    flagged = speedup_flags(report, stats["backend"], stats["label"])
    return f"{stats['speedup_vs_eager']:.2f}x" + (" (not trustworthy)" if flagged else "")


def matrix_speedup(report: dict[str, Any], stats: dict[str, Any]) -> str:
    """`` (1.50x)`` after a p50 in the matrix, with the reasons when it is not trustworthy."""
    if stats["speedup_vs_eager"] is None:
        return ""
    flags = ", ".join(speedup_flags(report, stats["backend"], stats["label"]))
    return f" ({stats['speedup_vs_eager']:.2f}x" + (f", not trustworthy: {flags})" if flags else ")")


def timing_cell(report: dict[str, Any], stats: dict[str, Any]) -> str:
    """The warning codes on a row's own figures: ``ok``, or ``-`` in reports that did not assess them."""
    if not report.get("timing_quality"):
        return "-"
    return ", ".join(figure_flags(report, stats["backend"], stats["label"])) or "ok"


def markdown_lines(report: dict[str, Any]) -> list[str]:
    """The probe and the warnings as a quote (warnings in bold), with a blank line after; none: []."""
    lines: list[str] = []
    for text in timing_sentences(report):
        quoted = f"> {text}" if text.startswith("Thread probe") else f"> **{text}**"
        lines += [">", quoted] if lines else [quoted]
    return [*lines, ""] if lines else []


def timing_sentences(report: dict[str, Any]) -> list[str]:
    """The thread probe's finding, then every warning and what the marks mean (for text renderers)."""
    probe = probe_sentence(report)
    warnings = warning_sentences(report)
    return [*([probe] if probe else []), *warnings, *([UNTRUSTED_NOTE] if warnings else [])]
