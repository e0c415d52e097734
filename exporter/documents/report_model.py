"""report.json as a typed, versioned model: checked when written and when read back.

The parts other code reads (stages, backends, parity, latency) are typed; deeply nested free-form parts
(conversion details, environment, settings, quantization, optimization) stay JSON objects. Fields with a
default are absent from reports written by earlier exporters of the same schema version. A stage's row is
the pipeline's ``StageRecord``, a latency row the benchmark's ``LatencyStats`` and a parity entry's
tolerance ``verify.comparison.Tolerance``: one type each, used by the code and read back from the document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from exporter.benchmark.decoder import DecoderLatency
from exporter.benchmark.latency import LatencyStats
from exporter.documents.fields import Number, Typed
from exporter.documents.files import read_document
from exporter.documents.manifest import InputSpecEntry, NonfiniteEntry, read_typed
from exporter.report.markdown import REPORT_SCHEMA_VERSION
from exporter.stages.records import StageRecord, TargetFailure
from exporter.verify.comparison import Tolerance

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "BackendEntry",
    "LatencyStats",
    "ParityEntry",
    "Report",
    "StageRecord",
    "TimingQualityEntry",
    "read_report",
]


class BackendEntry(Typed):
    """One target's outcome: the shipped candidate, whether it passed, and its conversion record."""

    backend: str
    target: str
    file: str | None
    shipped: str
    passed: bool
    conversion: dict[str, Any]
    notes: list[str]
    load_seconds: dict[str, Number]


class ParityEntry(Typed):
    """One candidate of one backend against the reference, per golden case (cases stay free-form)."""

    backend: str
    artifact: str
    reference: str
    tolerance: Tolerance
    float64_arbitrated: bool
    passed: bool
    cases: list[dict[str, Any]]


class ThreadProbeEntry(Typed):
    """Eager PyTorch timed briefly at 1 thread and at the configured threads."""

    backend: str
    label: str
    threads: int
    one_thread_p50_ms: Number
    threads_p50_ms: Number
    faster: str


class TimingWarningEntry(Typed):
    """One reason not to trust the figures of ``backend`` at ``label`` (None: every one)."""

    code: Literal["busy-machine", "threads-over-cpus", "wide-spread", "threads-slower"]
    backend: str | None
    label: str | None
    message: str


class TimingQualityEntry(Typed):
    """How far to trust the latency figures: load around the timing, the thread probe, the warnings."""

    baseline: str
    threads: int
    usable_cpus: int
    load_before: Number | None
    load_after: Number | None
    own_cpus: Number | None
    probes: list[ThreadProbeEntry]
    thresholds: dict[str, Number]
    warnings: list[TimingWarningEntry]


class Report(Typed):
    """Everything one export measured, with the notes a reader needs."""

    schema_version: Literal[1]
    name: str
    created_utc: str
    status: Literal["passed", "failed", "partial"]
    stages: list[StageRecord]
    environment: dict[str, Any]
    source: dict[str, Any]
    input_spec: InputSpecEntry
    seed: int
    settings: dict[str, Any]
    conversion: dict[str, Any] | None = None
    backends: list[BackendEntry]
    parity: list[ParityEntry]
    latency: list[LatencyStats]
    timing: dict[str, Any] | None = None
    timing_quality: TimingQualityEntry | None = None
    quantization: dict[str, Any] | None = None
    optimization: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    optimization_summary: dict[str, Any] | None = None
    nonfinite: list[NonfiniteEntry] | None = None
    failed_targets: list[TargetFailure] | None = None
    hf: dict[str, Any] | None = None
    generation: list[dict[str, Any]] | None = None
    """A decoder's greedy generation per checked artifact (``GenerationResult.to_json``)."""
    decoder_latency: list[DecoderLatency] | None = None
    notes: list[str]
    artifacts: dict[str, str]


def read_report(folder: Path, name: str = "report.json") -> Report:
    """``folder/name`` as a ``Report``; ``model_dump(exclude_unset=True)`` gives back the document as read,
    for the renderers.

    Raises:
        UsageError: not a folder, no such file, not JSON, another schema version, or not a report.
    """
    document = read_document(folder, name, REPORT_SCHEMA_VERSION, use="render", kind="report")
    return read_typed(Report, document, f"{name} of '{folder}'", "report")
