"""Verification of every backend alike: each target's candidates (best first) are opened as runners, judged
against the golden cases, and the first that passes ships. Backends that miss float32 eager on values
alone are re-judged against a float64 eager reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from exporter.backends.registry import ArtifactCandidate, BackendResult, BackendSpec, BuiltBackend
from exporter.errors import first_line
from exporter.runners.base import Runner
from exporter.runners.pytorch import EagerRunner, Float64EagerRunner
from exporter.verify.parity import (
    CaseResult,
    GoldenCase,
    ParityResult,
    Tolerance,
    arbitrate_with_float64,
    verify_runner,
)

if TYPE_CHECKING:
    import torch

__all__ = ["arbitrate_float_backends", "verify_backend", "verify_built"]


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
    built = [r for r in results if not _failed_to_load(r)]  # a failing backend reports one that ran
    shipped = next((r for r in results if r.passed), built[-1] if built else results[-1])
    index = results.index(shipped)
    chosen = candidates[index] if index < len(candidates) else candidates[-1]
    return BackendResult(
        backend, target, file, results, shipped.artifact, chosen.path, runner=kept, load_seconds=load_seconds
    )


def _failed_to_load(result: ParityResult) -> bool:
    return len(result.cases) == 1 and result.cases[0].case == "load" and result.cases[0].error is not None


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


def verify_built(
    spec: BackendSpec,
    built: BuiltBackend,
    golden: Sequence[GoldenCase],
    tolerance: Tolerance,
    step: Callable[[str], None] | None = None,
) -> BackendResult:
    """Verify a built backend's candidates, best first; the result remembers its spec and build."""
    result = verify_backend(
        backend=spec.name,
        target=spec.target or "",
        file=spec.file,
        candidates=built.candidates,
        golden=golden,
        tolerance=tolerance,
        step=step,
        keep_runner=spec.keep_runner,
    )
    result.spec, result.built = spec, built
    result.conversion = dict(built.conversion)
    if built.finish is not None:
        built.finish(result)
    return result
