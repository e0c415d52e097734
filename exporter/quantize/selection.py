"""Which int8 candidate ships: each built candidate timed beside the float ONNX model, then the fastest
within budget chosen (for ``int8``, only one faster than float)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

from exporter.benchmark import BatchPlan, LatencyStats, TimingConfig, compare_latency
from exporter.quantize.types import Candidate, QuantMode
from exporter.runners import OnnxRuntimeRunner

__all__ = ["FLOAT_LABEL", "choose_candidate", "time_candidates"]

FLOAT_LABEL = "float"
"""The float ONNX model's name in the int8 timings (the pipeline reports it under the ONNX backend)."""


def time_candidates(
    float_onnx: Path,
    candidates: Sequence[Candidate],
    plans: Sequence[BatchPlan],
    timing: TimingConfig,
    threads: int,
) -> list[LatencyStats]:
    """Float and every built candidate in ONNX Runtime, compared in alternating blocks per batch plan.

    Fills each timed candidate's ``latency`` and ``p50_ratio`` (geometric mean over batch plans of its p50
    over float's) and returns float's statistics: the float model's one figure in this run (the benchmark
    stage reuses it). The one place candidates are timed.
    """
    timed = [c for c in candidates if c.path is not None and not c.shape_errors]
    models = [(FLOAT_LABEL, float_onnx)] + [(f"int8 {c.name}", c.path) for c in timed]
    with contextlib.ExitStack() as stack:
        runners = [
            stack.enter_context(OnnxRuntimeRunner(path, threads, name=label))
            for label, path in models
            if path is not None
        ]
        per_plan = [compare_latency(runners, plan, config=timing, threads=threads) for plan in plans]
    float_stats = [stats[0] for stats in per_plan]
    for index, candidate in enumerate(timed, start=1):
        candidate.latency = [stats[index] for stats in per_plan]
        ratios = [
            c.p50_ms / f.p50_ms for c, f in zip(candidate.latency, float_stats, strict=True) if f.p50_ms > 0
        ]
        candidate.p50_ratio = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
        for c, f in zip(candidate.latency, float_stats, strict=True):
            c.speedup_vs_float = f.p50_ms / c.p50_ms if c.p50_ms > 0 else None
    return float_stats


def choose_candidate(mode: QuantMode, candidates: list[Candidate], notes: list[str]) -> None:
    """``int8`` ships the fastest candidate within budget and faster than float; an explicit mode ships its
    fastest candidate within budget even when slower than float, flagged."""
    within = [c for c in candidates if c.budget_passed and c.p50_ratio is not None]
    for candidate in within:
        if not candidate.faster_than_float:
            notes.append(
                f"int8 candidate {candidate.name} is SLOWER than float "
                f"(p50 x{candidate.p50_ratio:.2f} of float ONNX Runtime)"
            )
    eligible = [c for c in within if c.faster_than_float] if mode is QuantMode.INT8 else within
    if not eligible:
        if within and mode is QuantMode.INT8:
            notes.append(
                "no int8 candidate was both within budget and faster than float: no int8 model shipped"
            )
        elif not within:
            notes.append("no int8 candidate met the parity budget: no int8 model shipped")
        return
    best = min(eligible, key=lambda c: c.p50_ratio or math.inf)
    best.chosen = True
