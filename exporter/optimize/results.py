"""The optimize stage's options and records: each verified variant, each step's record, and the result the
pipeline, the report and the int8 stage read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.verify.parity import ParityResult

__all__ = ["OptimizationResult", "OptimizeOptions", "StepRecord", "Variant"]


@dataclass(frozen=True)
class OptimizeOptions:
    """``steps``: ("auto",), ("none",) or step names; heads/hidden 0 let ORT infer them from the graph."""

    steps: tuple[str, ...] = ("auto",)
    num_heads: int = 0
    hidden_size: int = 0
    max_slowdown: float = 0.03


@dataclass
class Variant:
    """One verified model: where it came from, and its p50 per batch plan."""

    label: str
    path: Path
    parity: ParityResult
    latency: dict[str, float]
    quantizable: Path

    @property
    def score(self) -> float:
        """Geometric mean p50 over batch plans: one number to rank variants by."""
        return _score(self.latency)


@dataclass
class StepRecord:
    """What one step did: kept or dropped, why, its build time and the latency it measured."""

    name: str
    source: str
    result: str
    kept: bool
    reason: str
    seconds: float
    latency: list[dict[str, Any]] = field(default_factory=list)
    fused: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "result": self.result,
            "kept": self.kept,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "latency": self.latency,
            "fused": self.fused,
        }


@dataclass
class OptimizationResult:
    """What the stage found and what ships.

    ``best`` is the fastest verified variant (int8 starts from its ``quantizable``); ``portable`` the
    fastest with only standard ONNX domains (``model.onnx``); ``runtime_specific`` the fastest overall when
    it needs ONNX Runtime's own ops and beat ``portable`` by more than ``max_slowdown`` when both were timed
    together (``model.ort.onnx``), else None. ``domains`` maps every verified variant's label to the
    non-standard domains its nodes use; ``runtime_specific_ratio`` is ``best``'s p50 over ``portable``'s in
    that joint timing (None when ``best`` is portable and nothing was compared).
    """

    steps_requested: list[str]
    records: list[StepRecord]
    baseline: Variant
    best: Variant
    parity: list[ParityResult]
    portable: Variant
    runtime_specific: Variant | None = None
    domains: dict[str, set[str]] = field(default_factory=dict)
    runtime_specific_ratio: float | None = None

    def to_json(self) -> dict[str, Any]:
        portable, specific = self.portable, self.runtime_specific
        return {
            "steps": self.steps_requested,
            "baseline": {"label": self.baseline.label, "latency": _latency_rows(self.baseline.latency)},
            "shipped": portable.label,
            "portable": portable.label,
            "runtime_specific": specific.label if specific is not None else None,
            "fastest": self.best.label,
            "runtime_specific_p50_ratio": self.runtime_specific_ratio,
            "speedup_vs_unoptimized": self.baseline.score / portable.score if portable.score else None,
            "quantization_source": self.best.quantizable.name,  # a working file: reports name the label
            "quantization_source_label": self._label_of(self.best.quantizable),
            "domains": {label: sorted(found) for label, found in self.domains.items()},
            "records": [r.to_json() for r in self.records],
        }

    def _label_of(self, path: Path) -> str | None:
        """The label of the variant saved at ``path`` (None if it is none of those this result holds)."""
        known = (self.portable, self.baseline, self.best, self.runtime_specific)
        return next((v.label for v in known if v is not None and v.path == path), None)


@dataclass
class _Trail:
    """What the steps leave behind: a record per step, every parity result, every verified variant."""

    records: list[StepRecord] = field(default_factory=list)
    parity: list[ParityResult] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)


def _score(latency: dict[str, float]) -> float:
    values = [v for v in latency.values() if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.inf


def _latency_rows(latency: dict[str, float]) -> list[dict[str, Any]]:
    return [{"label": label, "p50_ms": round(p50, 4)} for label, p50 in latency.items()]
