"""Latency stage: time every backend the same way (threads, warm-up, stopping rule, percentiles).

Numbers here are measurements for the report, never assertions: tests check their shape, not their values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import StrictInt, StrictStr
from pydantic import dataclasses as pydantic_dataclasses

from exporter.documents.fields import ENTRY, Number
from exporter.specs.inputs import InputSpec, make_inputs

if TYPE_CHECKING:  # only annotations: report.json's reader imports this module without torch
    from exporter.runners.base import Runner

__all__ = [
    "BatchPlan",
    "LatencyStats",
    "TimingConfig",
    "batch_plans",
    "compare_latency",
    "measure_latency",
    "p50_per_plan",
]


@dataclass(frozen=True)
class TimingConfig:
    """Warm up, then run until both ``min_runs`` and ``min_seconds`` are reached (capped by the maxima)."""

    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 1.0
    max_runs: int = 5000
    max_seconds: float = 15.0
    block_calls: int = 5
    """Calls timed per candidate per round when candidates are compared (``compare_latency``), at least."""
    block_seconds: float = 0.1
    """...and at least this long, so a fast model's block is not dwarfed by its warm-up."""
    warm_seconds: float = 0.1
    """Untimed calls before each block, for about this long: the previous candidate's threads settle."""
    enough_seconds: float = 3.0
    """A runner with this much timed (and at least ``SLOW_MODEL_RUNS`` calls) has enough samples even short
    of ``min_runs``: 50 calls of a 400 ms model add 20 s and nothing to a median."""
    warmup_seconds: float = 1.0
    """The first warm-up stops after this long even short of ``warmup`` calls (at least one call)."""


SLOW_MODEL_RUNS = 10
CLEARLY_SLOWER = 1.25
"""A candidate whose fastest call is this much slower than its reference's median is dropped from further
rounds (``compare_latency(..., reference_of=...)``): it cannot become faster than its reference."""
SETTLE_ROUNDS = 3


@dataclass(frozen=True)
class BatchPlan:
    """One shape to time at: a label for tables, the batch size (None without a batch dim), the inputs."""

    label: str
    batch: int | None
    inputs: dict[str, np.ndarray]


def batch_plans(spec: InputSpec, batch_dim: str, batch_sizes: tuple[int, ...], seed: int) -> list[BatchPlan]:
    """Each legal batch size when the spec has ``batch_dim``, else the export shape; inputs drawn once."""
    sizes = spec.example_sizes
    if batch_dim in sizes:
        dim = spec.dim(batch_dim)
        legal = [b for b in batch_sizes if dim.allows(b)]
        shapes: list[tuple[str, int | None, dict[str, int]]] = [
            (f"{batch_dim}={b}", b, {**sizes, batch_dim: b}) for b in legal
        ]
    else:
        shapes = [("export shape", None, dict(sizes))]
    return [
        BatchPlan(label, batch, make_inputs(spec, plan_sizes, seed + 1000 + index))
        for index, (label, batch, plan_sizes) in enumerate(shapes)
    ]


@pydantic_dataclasses.dataclass(config=ENTRY)
class LatencyStats:
    """One runner's timing at one batch plan; report.json's ``latency`` rows are this type as they are."""

    backend: StrictStr
    label: StrictStr
    batch: StrictInt | None
    input_shapes: dict[StrictStr, list[StrictInt]]
    threads: StrictInt
    runs: StrictInt
    p50_ms: Number
    p90_ms: Number
    p99_ms: Number
    mean_ms: Number
    min_ms: Number
    throughput_per_s: Number
    speedup_vs_eager: Number | None = None
    speedup_vs_float: Number | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(
    runner: Runner,
    inputs: Mapping[str, np.ndarray],
    *,
    config: TimingConfig,
    threads: int,
    label: str,
    batch: int | None,
) -> LatencyStats:
    """Time ``runner.run(inputs)`` end to end (input conversion included, as a caller would see it).

    Throughput counts samples (``batch`` per call) per second at the median latency, or calls when the
    model has no batch dim.
    """
    for _ in range(config.warmup):
        runner.run(inputs)
    samples: list[float] = []
    started = time.perf_counter()
    while True:
        tick = time.perf_counter_ns()
        runner.run(inputs)
        samples.append((time.perf_counter_ns() - tick) / 1e6)
        elapsed = time.perf_counter() - started
        enough = len(samples) >= config.min_runs and elapsed >= config.min_seconds
        if enough or len(samples) >= config.max_runs or elapsed >= config.max_seconds:
            break
    return _stats(runner.name, BatchPlan(label, batch, dict(inputs)), threads, samples)


def _stats(backend: str, plan: BatchPlan, threads: int, samples: Sequence[float]) -> LatencyStats:
    """Percentiles of call times in ms; throughput counts samples (``batch`` per call) per second at p50."""
    times = np.asarray(samples)
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    return LatencyStats(
        backend=backend,
        label=plan.label,
        batch=plan.batch,
        input_shapes={n: list(a.shape) for n, a in plan.inputs.items()},
        threads=threads,
        runs=len(samples),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(times.mean()),
        min_ms=float(times.min()),
        throughput_per_s=(plan.batch or 1) * 1000.0 / p50 if p50 > 0 else float("inf"),
    )


def p50_per_plan(
    runners: Sequence[Runner], plans: Sequence[BatchPlan], *, config: TimingConfig, threads: int
) -> list[dict[str, float]]:
    """p50 ms per plan label of each runner, compared in alternating blocks: what keep-or-drop and
    regression decisions compare."""
    per_plan = [compare_latency(runners, plan, config=config, threads=threads) for plan in plans]
    return [{stats[i].label: stats[i].p50_ms for stats in per_plan} for i in range(len(runners))]


def compare_latency(
    runners: Sequence[Runner],
    plan: BatchPlan,
    *,
    config: TimingConfig,
    threads: int,
    on_block: Callable[[Runner], None] | None = None,
    reference_of: Mapping[int, int] | None = None,
) -> list[LatencyStats]:
    """Time several runners on one plan in alternating blocks, so they share the machine's drift.

    Each round visits every runner, starting one further along each time: it warms the runner untimed
    for ``warm_seconds`` (at least one call), then times ``block_calls`` calls and at least
    ``block_seconds``. Not call-by-call alternation: on 2 cores a call right after an ONNX Runtime call
    runs 1.5-2.6x slower (ORT's threads keep spinning after ``run``), which biases A-B-A-B toward whatever
    runs first. Rounds go on until every runner has ``min_runs`` samples over ``min_seconds`` of timed
    calls or its own ``max_runs`` (then it drops out of the rounds), or ``max_seconds`` per runner pass.
    Returns stats in the order of ``runners``. ``on_block`` hears which runner a block is about to time
    (for progress displays), outside the timed calls.

    A runner has enough samples at ``min_runs`` over ``min_seconds``, or (slow models) at
    ``SLOW_MODEL_RUNS`` over ``enough_seconds``. ``reference_of`` maps a candidate's index to its
    reference's (a lossy model to its float source): after ``SETTLE_ROUNDS`` rounds a candidate whose
    fastest call is ``CLEARLY_SLOWER`` than its reference's median stops being timed (its figures come from
    the rounds it ran), since only candidates faster than their reference can be chosen.
    """
    if not runners:
        return []
    for runner in runners:
        until = time.perf_counter() + config.warmup_seconds
        for _ in range(max(1, config.warmup)):
            runner.run(plan.inputs)
            if time.perf_counter() >= until:
                break
    samples: list[list[float]] = [[] for _ in runners]
    timed = [0.0 for _ in runners]
    active = set(range(len(runners)))
    started = time.perf_counter()
    round_index = 0

    def has_enough(index: int) -> bool:
        count, seconds = len(samples[index]), timed[index]
        if count >= config.min_runs and seconds >= config.min_seconds:
            return True
        return count >= SLOW_MODEL_RUNS and seconds >= config.enough_seconds

    while True:
        for offset in range(len(runners)):
            index = (round_index + offset) % len(runners)
            if index not in active:
                continue
            if on_block is not None:
                on_block(runners[index])
            _warm(runners[index], plan, config.warm_seconds)
            block_started, calls = time.perf_counter(), 0
            while (
                calls < max(1, config.block_calls)
                or time.perf_counter() - block_started < config.block_seconds
            ):
                tick = time.perf_counter_ns()
                runners[index].run(plan.inputs)
                elapsed = (time.perf_counter_ns() - tick) / 1e6
                samples[index].append(elapsed)
                timed[index] += elapsed / 1000
                calls += 1
        round_index += 1
        if reference_of and round_index >= SETTLE_ROUNDS:
            for candidate, reference in reference_of.items():
                median = float(np.median(samples[reference]))
                if candidate in active and min(samples[candidate]) > CLEARLY_SLOWER * median:
                    active.discard(candidate)
        # A runner at max_runs is done; the others go on: a microsecond model filling its cap in one
        # block once ended every runner's timing, leaving a slow one with the few calls of its first block.
        active -= {i for i in active if len(samples[i]) >= config.max_runs}
        enough = all(has_enough(i) for i in active)
        if enough or time.perf_counter() - started >= config.max_seconds * len(runners):
            break
    return [
        _stats(runner.name, plan, threads, values) for runner, values in zip(runners, samples, strict=True)
    ]


def _warm(runner: Runner, plan: BatchPlan, seconds: float) -> None:
    until = time.perf_counter() + seconds
    runner.run(plan.inputs)
    while time.perf_counter() < until:
        runner.run(plan.inputs)
