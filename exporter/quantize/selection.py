"""Which int8 candidate ships: each built candidate timed beside the float ONNX model, then the fastest
within budget chosen (for ``int8``, only one faster than float)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from exporter.benchmark import BatchPlan, LatencyStats, TimingConfig, compare_latency
from exporter.quantize.judge import open_candidate, open_model
from exporter.quantize.types import Candidate, QuantMode

__all__ = ["FLOAT_LABEL", "choose_candidate", "float_label", "time_candidates"]

FLOAT_LABEL = "float"
"""The float ONNX model's name in the int8 timings (the pipeline reports it under the ONNX backend)."""


def time_candidates(
    float_models: Mapping[str, Path],
    candidates: Sequence[Candidate],
    plans: Sequence[BatchPlan],
    timing: TimingConfig,
    threads: int,
    *,
    float_configs: Mapping[str, dict[str, str]] | None = None,
) -> dict[str, list[LatencyStats]]:
    """The float model of each runtime and every built candidate, compared in alternating blocks per plan.

    ``float_models`` maps a runtime (``onnxruntime``, ``openvino``) to its float model; each candidate is
    judged against the float model of the runtime that runs it (a lossy artifact must beat its own float
    source), while all share one timing so figures compare across runtimes too. Fills each timed candidate's
    ``latency`` and ``p50_ratio`` (geometric mean over plans of its p50 over its float's) and returns each
    runtime's float statistics (the benchmark stage reuses them). The one place candidates are timed.
    """
    configs = float_configs or {}
    timed = [c for c in candidates if c.path is not None and not c.shape_errors and c.runtime in float_models]
    with contextlib.ExitStack() as stack:
        runners = [
            stack.enter_context(
                open_model(path, runtime, threads, configs.get(runtime, {}), float_label(runtime))
            )
            for runtime, path in float_models.items()
        ]
        runners += [stack.enter_context(open_candidate(c, threads, f"lossy {c.name}")) for c in timed]
        runtimes = list(float_models)
        reference_of = {
            index: runtimes.index(c.runtime) for index, c in enumerate(timed, start=len(float_models))
        }
        per_plan = [
            compare_latency(runners, plan, config=timing, threads=threads, reference_of=reference_of)
            for plan in plans
        ]
    floats = {runtime: [stats[index] for stats in per_plan] for index, runtime in enumerate(float_models)}
    for index, candidate in enumerate(timed, start=len(float_models)):
        reference = floats[candidate.runtime]
        candidate.latency = [stats[index] for stats in per_plan]
        ratios = [
            c.p50_ms / f.p50_ms for c, f in zip(candidate.latency, reference, strict=True) if f.p50_ms > 0
        ]
        candidate.p50_ratio = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
        for c, f in zip(candidate.latency, reference, strict=True):
            c.speedup_vs_float = f.p50_ms / c.p50_ms if c.p50_ms > 0 else None
    return floats


def float_label(runtime: str) -> str:
    """The float model's name in the quantize stage's timings."""
    return FLOAT_LABEL if runtime == "onnxruntime" else f"{FLOAT_LABEL} {runtime}"


def choose_candidate(mode: QuantMode, candidates: list[Candidate], notes: list[str]) -> None:
    """Per runtime, ``int8`` ships the fastest candidate within budget and faster than that runtime's float
    model at every batch size timed (a geometric mean would let a win at batch 1 hide a loss at batch 8);
    an explicit mode ships its fastest candidate within budget even when slower than float, flagged."""
    for runtime in dict.fromkeys(c.runtime for c in candidates):
        _choose(mode, [c for c in candidates if c.runtime == runtime], notes, runtime)


def _choose(mode: QuantMode, candidates: list[Candidate], notes: list[str], runtime: str) -> None:
    where = "ONNX Runtime" if runtime == "onnxruntime" else runtime
    within = [c for c in candidates if c.budget_passed and c.p50_ratio is not None]
    for candidate in within:
        if not candidate.faster_than_float:
            notes.append(
                f"lossy candidate {candidate.name} is SLOWER than float {where} at "
                f"{', '.join(candidate.slower_at)} (p50 x{candidate.p50_ratio:.2f} of float over all sizes)"
            )
    eligible = [c for c in within if c.faster_than_float] if mode is QuantMode.INT8 else within
    if not eligible:
        if within and mode is QuantMode.INT8:
            notes.append(
                f"no {where} candidate was both within budget and faster than float: none shipped for {where}"
            )
        elif not within:
            notes.append(f"no {where} candidate met the parity budget: none shipped for {where}")
        return
    best = min(eligible, key=lambda c: c.p50_ratio or math.inf)
    best.chosen = True
