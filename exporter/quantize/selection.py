"""Which int8 candidate ships: each built candidate timed beside the float ONNX model, then the fastest
within budget chosen (for ``int8``, only one faster than float)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from exporter.benchmark.latency import BatchPlan, LatencyStats, TimingConfig, compare_latency
from exporter.quantize.judge import open_candidate, open_model
from exporter.quantize.shipping import REFERENCE_RUNTIME, runtime_title
from exporter.quantize.types import WEIGHT_ONLY_MODES, Candidate, QuantMode
from exporter.runners.base import Runner

__all__ = ["FLOAT_LABEL", "choose_candidate", "float_label", "time_candidates"]

FLOAT_LABEL = "float"
"""The float ONNX model's name in the int8 timings (the pipeline reports it under the ONNX backend)."""


def time_candidates(
    float_models: Mapping[str, Path],
    candidates: Sequence[Candidate],
    plans: Sequence[BatchPlan],
    timing: TimingConfig,
    threads: int,
) -> dict[str, list[LatencyStats]]:
    """The float model of each runtime and every built candidate, compared in alternating blocks per plan.

    ``float_models`` maps a runtime (a registered backend's ``runtime``) to its float model; each candidate is
    judged against the float model of the runtime that runs it (a lossy artifact must beat its own float
    source). Runtimes are timed one after another, each with its own sessions open and closed before the
    next opens: every model open at once would hold every runtime's weights together (the float ONNX
    model, the float IR, the bf16 IR and each candidate). Every candidate is timed at the first plan (batch
    1, the cheapest); only the contenders go on to the other plans: per runtime, the ``CONTENDERS`` fastest
    at the first plan that meet the budget and beat their float model there (the rest cannot ship in
    ``int8``, and the larger batches are where the time goes). Fills each timed candidate's ``latency``,
    ``p50_ratio`` (geometric mean over the plans it ran of its p50 over its float's) and ``timed_in_full``;
    returns each runtime's float statistics at every plan. The one place candidates are timed.
    """
    timed = [c for c in candidates if c.path is not None and not c.shape_errors and c.runtime in float_models]
    floats: dict[str, list[LatencyStats]] = {runtime: [] for runtime in float_models}
    for candidate in timed:
        candidate.latency = []
    for runtime, path in float_models.items():
        mine = [c for c in timed if c.runtime == runtime]
        floats[runtime] = _time_runtime((runtime, path), mine, plans, timing, threads)
    for candidate in timed:
        candidate.timed_in_full = len(candidate.latency) == len(plans)
        ratios = [1 / s.speedup_vs_float for s in candidate.latency if s.speedup_vs_float]
        candidate.p50_ratio = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
    return floats


def _time_runtime(
    float_model: tuple[str, Path],
    mine: Sequence[Candidate],
    plans: Sequence[BatchPlan],
    timing: TimingConfig,
    threads: int,
) -> list[LatencyStats]:
    """One runtime's float model (runtime, path) and candidates at every plan (contenders only past the
    first), its sessions open for this runtime alone; the float statistics per plan."""
    runtime, path = float_model
    floats: list[LatencyStats] = []
    with contextlib.ExitStack() as stack:
        float_runner = stack.enter_context(open_model(path, runtime, threads, {}, float_label(runtime)))
        runner_of = {id(c): stack.enter_context(open_candidate(c, threads, f"lossy {c.name}")) for c in mine}
        for plan_index, plan in enumerate(plans):
            group = mine if plan_index == 0 else _contenders(mine, {runtime: floats})
            runners = [float_runner, *(runner_of[id(c)] for c in group)]
            stats = _time_group(runners, [runtime], group, plan=plan, timing=timing, threads=threads)
            floats.append(stats[0])
            for candidate, candidate_stats in zip(group, stats[1:], strict=True):
                ratio = stats[0].p50_ms / candidate_stats.p50_ms if candidate_stats.p50_ms > 0 else None
                candidate_stats.speedup_vs_float = ratio
                candidate.latency.append(candidate_stats)
    return floats


CONTENDERS = 2
"""Candidates per runtime timed beyond the first plan."""


def _contenders(timed: Sequence[Candidate], floats: Mapping[str, list[LatencyStats]]) -> list[Candidate]:
    chosen: list[Candidate] = []
    for runtime in dict.fromkeys(c.runtime for c in timed):
        first = floats[runtime][0].p50_ms
        able = [
            c
            for c in timed
            if c.runtime == runtime and c.budget_passed and c.latency and c.latency[0].p50_ms < first
        ]
        chosen += sorted(able, key=lambda c: c.latency[0].p50_ms)[:CONTENDERS]
    return chosen


def _time_group(
    runners: Sequence[Runner],
    runtimes: Sequence[str],
    group: Sequence[Candidate],
    *,
    plan: BatchPlan,
    timing: TimingConfig,
    threads: int,
) -> list[LatencyStats]:
    """The runtimes' float runners, then ``group``'s, timed together on one plan: stats in that order."""
    reference_of = {index: runtimes.index(c.runtime) for index, c in enumerate(group, start=len(runtimes))}
    return compare_latency(runners, plan, config=timing, threads=threads, reference_of=reference_of)


def float_label(runtime: str) -> str:
    """The float model's name in the quantize stage's timings."""
    return FLOAT_LABEL if runtime == REFERENCE_RUNTIME else f"{FLOAT_LABEL} {runtime}"


def choose_candidate(mode: QuantMode, candidates: list[Candidate], notes: list[str]) -> None:
    """Per runtime, ``int8`` and ``int4`` ship the fastest candidate within budget and faster than that
    runtime's float model at every batch size timed (for a decoder: per token), since a geometric mean would
    let a win at batch 1 hide a loss at batch 8; an explicit mode ships its fastest candidate within budget
    even when slower than float, flagged."""
    for runtime in dict.fromkeys(c.runtime for c in candidates):
        _choose(mode, [c for c in candidates if c.runtime == runtime], notes, runtime)


def _choose(mode: QuantMode, candidates: list[Candidate], notes: list[str], runtime: str) -> None:
    where = runtime_title(runtime)
    within = [c for c in candidates if c.budget_passed and c.p50_ratio is not None]
    for candidate in within:
        if not candidate.timed_in_full:
            notes.append(
                f"lossy candidate {candidate.name} was timed at {candidate.latency[0].label} only: slower "
                f"there than float {where} or than {CONTENDERS} other candidates, so not a contender"
            )
        elif not candidate.faster_than_float:
            notes.append(
                f"lossy candidate {candidate.name} is SLOWER than float {where} at "
                f"{', '.join(candidate.slower_at)} (p50 x{candidate.p50_ratio:.2f} of float over all sizes)"
            )
    eligible = [c for c in within if c.faster_than_float] if mode in WEIGHT_ONLY_MODES else within
    if not eligible:
        if within and mode in WEIGHT_ONLY_MODES:
            notes.append(
                f"no {where} candidate was both within budget and faster than float: none shipped for {where}"
            )
        elif not within:
            notes.append(f"no {where} candidate met the parity budget: none shipped for {where}")
        return
    best = min(eligible, key=lambda c: c.p50_ratio or math.inf)
    best.chosen = True
