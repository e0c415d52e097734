"""Latency stage: time every backend the same way (threads, warm-up, stopping rule, percentiles).

Numbers here are measurements for the report, never assertions: tests check their shape, not their values.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from exporter.runners import Runner
from exporter.specs import InputSpec, make_inputs

__all__ = ["BatchPlan", "LatencyStats", "TimingConfig", "batch_plans", "measure_latency", "p50_per_plan"]


@dataclass(frozen=True)
class TimingConfig:
    """Warm up, then run until both ``min_runs`` and ``min_seconds`` are reached (capped by the maxima)."""

    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 1.0
    max_runs: int = 5000
    max_seconds: float = 15.0


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
        legal = [b for b in batch_sizes if b >= dim.min and (dim.max is None or b <= dim.max)]
        shapes: list[tuple[str, int | None, dict[str, int]]] = [
            (f"{batch_dim}={b}", b, {**sizes, batch_dim: b}) for b in legal
        ]
    else:
        shapes = [("export shape", None, dict(sizes))]
    return [
        BatchPlan(label, batch, make_inputs(spec, plan_sizes, seed + 1000 + index))
        for index, (label, batch, plan_sizes) in enumerate(shapes)
    ]


@dataclass
class LatencyStats:
    backend: str
    label: str
    batch: int | None
    input_shapes: dict[str, list[int]]
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_per_s: float
    speedup_vs_eager: float | None = None
    speedup_vs_float: float | None = None

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
    times = np.asarray(samples)
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    return LatencyStats(
        backend=runner.name,
        label=label,
        batch=batch,
        input_shapes={n: list(a.shape) for n, a in inputs.items()},
        threads=threads,
        runs=len(samples),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(times.mean()),
        min_ms=float(times.min()),
        throughput_per_s=(batch or 1) * 1000.0 / p50 if p50 > 0 else float("inf"),
    )


def p50_per_plan(
    runner: Runner, plans: Sequence[BatchPlan], *, config: TimingConfig, threads: int
) -> dict[str, float]:
    """p50 ms per plan label: what keep-or-drop and regression decisions compare."""
    return {
        plan.label: measure_latency(
            runner, plan.inputs, config=config, threads=threads, label=plan.label, batch=plan.batch
        ).p50_ms
        for plan in plans
    }
