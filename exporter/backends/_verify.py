"""Verification of every backend alike: each target's candidates (best first) are opened as runners, judged
against the golden cases, and the first that passes ships. Backends that miss float32 eager on values
alone are re-judged against a float64 eager reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from exporter.errors import first_line
from exporter.runners import EagerRunner, Float64EagerRunner, Runner
from exporter.verify.parity import (
    CaseResult,
    GoldenCase,
    ParityResult,
    Tolerance,
    arbitrate_with_float64,
    verify_runner,
)

if TYPE_CHECKING:
    from exporter.backends._registry import BackendSpec, BuiltBackend

__all__ = ["ArtifactCandidate", "BackendResult", "arbitrate_float_backends", "verify_backend"]


@dataclass
class ArtifactCandidate:
    """One form of a backend's artifact: ``open`` loads it the way a deployment would."""

    label: str
    path: Path | None
    open: Callable[[], Runner]


@dataclass
class BackendResult:
    """A backend's verification: every candidate tried, which one ships and the file it ships as."""

    backend: str
    target: str
    file: str | None
    parity: list[ParityResult]
    shipped: str
    path: Path | None
    conversion: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runner: Runner | None = field(default=None, repr=False)
    load_seconds: dict[str, float] = field(default_factory=dict)
    spec: BackendSpec | None = field(default=None, repr=False, compare=False)
    built: BuiltBackend | None = field(default=None, repr=False, compare=False)

    @property
    def shipped_parity(self) -> ParityResult:
        return next(p for p in self.parity if p.artifact == self.shipped)

    @property
    def passed(self) -> bool:
        return self.shipped_parity.passed

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "target": self.target,
            "file": self.file,
            "shipped": self.shipped,
            "passed": self.passed,
            "conversion": self.conversion,
            "notes": self.notes,
            "load_seconds": {label: round(seconds, 4) for label, seconds in self.load_seconds.items()},
        }


def verify_backend(
    *,
    backend: str,
    target: str,
    file: str | None,
    candidates: Sequence[ArtifactCandidate],
    golden: Sequence[GoldenCase],
    tolerance: Tolerance,
    step: Callable[[str], None] | None = None,
    keep_runner: bool = False,
) -> BackendResult:
    """Verify candidates best first and ship the first that passes (else the last, reported as failing).

    Runners are released after use (an idle ONNX Runtime session slows other backends) unless
    ``keep_runner`` asks to keep the shipped one (a compiled model is expensive to rebuild).
    """
    results: list[ParityResult] = []
    kept: Runner | None = None
    load_seconds: dict[str, float] = {}
    for candidate in candidates:
        if step:
            step(f"verifying {backend} ({candidate.label})")
        started = time.perf_counter()
        try:
            runner = candidate.open()
            load_seconds[candidate.label] = time.perf_counter() - started
        except Exception as error:
            failure = CaseResult("load", {}, {}, error=f"cannot load it: {first_line(error)}")
            results.append(ParityResult(backend, candidate.label, EagerRunner.name, tolerance, [failure]))
            continue
        result = verify_runner(runner, golden, tolerance, candidate.label)
        result.backend = backend
        results.append(result)
        last = result.passed or candidate is candidates[-1]
        if last and keep_runner:
            kept = runner
            break
        with runner:  # frees it
            pass
        if last:
            break
    shipped = next((r for r in results if r.passed), results[-1])
    index = results.index(shipped)
    chosen = candidates[index] if index < len(candidates) else candidates[-1]
    return BackendResult(
        backend, target, file, results, shipped.artifact, chosen.path, runner=kept, load_seconds=load_seconds
    )


def arbitrate_float_backends(
    backends: Sequence[BackendResult],
    module: torch.nn.Module,
    golden: Sequence[GoldenCase],
    input_names: Sequence[str],
) -> str | None:
    """When a float backend missed eager float32 on values alone, judge it against eager float64.

    Returns a note for the report (what was arbitrated, or why float64 was unavailable), or None when no
    backend needed it.
    """
    needing = [b.shipped_parity for b in backends if b.shipped_parity.numeric_failure]
    if not needing:
        return None
    try:
        reference = Float64EagerRunner(module, input_names)
        reference64 = [reference.run(item.inputs) for item in golden]
    except Exception as error:
        return f"float64 arbitration unavailable: the model does not run in float64 ({first_line(error)})"
    for parity in needing:
        arbitrate_with_float64(parity, golden, reference64)
    verdicts = ", ".join(f"{p.backend} {'accepted' if p.passed else 'still failing'}" for p in needing)
    return f"float backends disagreed with eager float32; judged against eager float64: {verdicts}"
