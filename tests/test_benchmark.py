"""Latency stage: the structure of the stats and the stopping rule; timing values are never asserted."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from exporter.benchmark.latency import (
    BatchPlan,
    LatencyStats,
    TimingConfig,
    compare_latency,
    measure_latency,
    p50_per_plan,
)
from exporter.runners.pytorch import EagerRunner

TINY = TimingConfig(warmup=1, min_runs=3, min_seconds=0.0, max_runs=5, max_seconds=1.0)


class CountingModel(nn.Module):
    """A tiny real model that counts how often it is called."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.linear(x)


def runner_and_inputs(batch: int = 2) -> tuple[EagerRunner, CountingModel, dict[str, np.ndarray]]:
    model = CountingModel().eval()
    inputs = {"x": np.random.default_rng(0).standard_normal((batch, 4)).astype(np.float32)}
    return EagerRunner(model, ["x"]), model, inputs


def test_stats_structure() -> None:
    runner, _, inputs = runner_and_inputs(batch=2)
    stats = measure_latency(runner, inputs, config=TINY, threads=3, label="batch=2", batch=2)
    assert isinstance(stats, LatencyStats)
    assert stats.backend == "pytorch-eager"
    assert stats.label == "batch=2"
    assert stats.batch == 2
    assert stats.threads == 3
    assert stats.input_shapes == {"x": [2, 4]}
    assert stats.speedup_vs_eager is None
    assert TINY.min_runs <= stats.runs <= TINY.max_runs


def test_percentiles_are_ordered_and_positive() -> None:
    runner, _, inputs = runner_and_inputs()
    stats = measure_latency(runner, inputs, config=TINY, threads=1, label="x", batch=2)
    values = [stats.min_ms, stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.mean_ms]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.min_ms <= stats.mean_ms


def test_throughput_counts_samples_at_the_median() -> None:
    runner, _, inputs = runner_and_inputs(batch=4)
    stats = measure_latency(runner, inputs, config=TINY, threads=1, label="b4", batch=4)
    assert stats.throughput_per_s == 4 * 1000.0 / stats.p50_ms


def test_throughput_counts_calls_without_a_batch_dim() -> None:
    runner, _, inputs = runner_and_inputs()
    stats = measure_latency(runner, inputs, config=TINY, threads=1, label="static", batch=None)
    assert stats.batch is None
    assert stats.throughput_per_s == 1000.0 / stats.p50_ms


def test_warmup_runs_are_not_timed() -> None:
    runner, model, inputs = runner_and_inputs()
    config = TimingConfig(warmup=4, min_runs=3, min_seconds=0.0, max_runs=3, max_seconds=1.0)
    stats = measure_latency(runner, inputs, config=config, threads=1, label="x", batch=2)
    assert stats.runs == 3
    assert model.calls == config.warmup + stats.runs


def test_max_runs_caps_min_runs() -> None:
    runner, _, inputs = runner_and_inputs()
    config = TimingConfig(warmup=0, min_runs=100, min_seconds=0.0, max_runs=4, max_seconds=10.0)
    stats = measure_latency(runner, inputs, config=config, threads=1, label="x", batch=2)
    assert stats.runs == 4


def test_stops_at_min_runs_when_min_seconds_is_zero() -> None:
    runner, _, inputs = runner_and_inputs()
    config = TimingConfig(warmup=0, min_runs=6, min_seconds=0.0, max_runs=1000, max_seconds=10.0)
    stats = measure_latency(runner, inputs, config=config, threads=1, label="x", batch=2)
    assert stats.runs == 6


def test_keeps_running_until_min_seconds() -> None:
    runner, _, inputs = runner_and_inputs()
    config = TimingConfig(warmup=0, min_runs=1, min_seconds=0.05, max_runs=10**9, max_seconds=5.0)
    started = time.perf_counter()
    stats = measure_latency(runner, inputs, config=config, threads=1, label="x", batch=2)
    assert time.perf_counter() - started >= config.min_seconds
    assert stats.runs >= config.min_runs


def test_max_seconds_stops_before_min_runs() -> None:
    runner, _, inputs = runner_and_inputs()
    config = TimingConfig(warmup=0, min_runs=10**9, min_seconds=0.0, max_runs=10**9, max_seconds=0.05)
    stats = measure_latency(runner, inputs, config=config, threads=1, label="x", batch=2)
    assert 1 <= stats.runs < config.min_runs


def test_to_json_has_every_field() -> None:
    runner, _, inputs = runner_and_inputs()
    stats = measure_latency(runner, inputs, config=TINY, threads=2, label="batch=2", batch=2)
    stats.speedup_vs_eager = 1.5
    data = stats.to_json()
    assert set(data) == {
        "backend",
        "label",
        "batch",
        "input_shapes",
        "threads",
        "runs",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "min_ms",
        "throughput_per_s",
        "speedup_vs_eager",
        "speedup_vs_float",
    }
    assert data["runs"] == stats.runs
    assert data["input_shapes"] == {"x": [2, 4]}
    assert data["speedup_vs_eager"] == 1.5
    assert all(isinstance(data[k], float) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms"))


class LoggingModel(nn.Module):
    """Appends its name to a shared log on every call, so the order of calls can be read back."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: Tensor) -> Tensor:
        self.log.append(self.name)
        return x * 2


def test_compare_latency_alternates_in_warmed_blocks_with_the_start_rotated() -> None:
    log: list[str] = []
    runners = [EagerRunner(LoggingModel(name, log), ["x"]) for name in ("a", "b", "c")]
    for runner, name in zip(runners, "abc", strict=True):
        runner.name = name
    config = TimingConfig(
        warmup=1,
        min_runs=6,
        min_seconds=0.0,
        max_runs=100,
        max_seconds=5.0,
        block_calls=3,
        block_seconds=0.0,
        warm_seconds=0.0,
    )
    plan = BatchPlan("batch=2", 2, {"x": np.ones((2, 4), np.float32)})
    stats = compare_latency(runners, plan, config=config, threads=1)
    assert [s.backend for s in stats] == ["a", "b", "c"]
    assert all(s.runs == 6 and s.label == "batch=2" and s.batch == 2 for s in stats)
    body = log[3:]  # one warm-up call each first
    blocks = [body[i : i + 4] for i in range(0, len(body), 4)]  # one warm call, then three timed calls
    assert all(len(set(block)) == 1 for block in blocks), "a block is one runner's calls only"
    order = [block[0] for block in blocks]
    assert order == ["a", "b", "c", "b", "c", "a"], "each round starts one runner further along"


def test_p50_per_plan_compares_runners_at_every_plan() -> None:
    runner, _, _ = runner_and_inputs()
    other, _, _ = runner_and_inputs()
    plans = [BatchPlan(f"batch={b}", b, {"x": np.ones((b, 4), np.float32)}) for b in (1, 3)]
    result = p50_per_plan([runner, other], plans, config=TINY, threads=1)
    assert len(result) == 2 and all(set(r) == {"batch=1", "batch=3"} for r in result)
    assert all(v > 0 for r in result for v in r.values())


class SleepingModel(nn.Module):
    """A model whose call takes a known time, so which runner is slower is not up to the machine."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_a_candidate_clearly_slower_than_its_reference_stops_being_timed() -> None:
    _, _, inputs = runner_and_inputs()
    plan = BatchPlan("batch=2", 2, inputs)
    reference, slower, unreferenced = (EagerRunner(SleepingModel(s), ["x"]) for s in (0.001, 0.004, 0.004))
    config = TimingConfig(warmup=1, min_runs=60, min_seconds=0.0, block_calls=5, block_seconds=0.0)
    config = TimingConfig(**{**vars(config), "warm_seconds": 0.0, "max_seconds": 30.0})
    stats = compare_latency(
        [reference, slower, unreferenced], plan, config=config, threads=1, reference_of={1: 0}
    )
    assert stats[0].runs >= 60 and stats[2].runs >= 60
    assert stats[1].runs < 30  # dropped after the settling rounds: 4x slower cannot beat its reference
    assert stats[1].p50_ms > stats[0].p50_ms


def test_a_slow_model_has_enough_samples_after_enough_seconds() -> None:
    _, _, inputs = runner_and_inputs()
    plan = BatchPlan("batch=2", 2, inputs)
    model = SleepingModel(0.03)
    config = TimingConfig(
        warmup=10, min_runs=50, min_seconds=0.0, enough_seconds=0.3, warmup_seconds=0.05, warm_seconds=0.0
    )
    (stats,) = compare_latency([EagerRunner(model, ["x"])], plan, config=config, threads=1)
    assert 10 <= stats.runs < 50
    assert model.calls < 50  # warm-up stopped at warmup_seconds, timing at enough_seconds


def test_a_fast_runner_at_its_cap_does_not_end_a_slow_runners_timing() -> None:
    """A microsecond model fills max_runs in one block; the slow model beside it still gets min_runs."""
    _, _, inputs = runner_and_inputs()
    plan = BatchPlan("batch=2", 2, inputs)
    fast, slow = EagerRunner(SleepingModel(0.0), ["x"]), EagerRunner(SleepingModel(0.005), ["x"])
    config = TimingConfig(
        warmup=1,
        min_runs=20,
        min_seconds=0.0,
        max_runs=30,
        max_seconds=30.0,
        block_calls=5,
        block_seconds=0.05,
    )
    config = TimingConfig(**{**vars(config), "warm_seconds": 0.0})
    stats = compare_latency([fast, slow], plan, config=config, threads=1)
    assert stats[0].runs >= 30  # capped in its first block
    assert stats[1].runs >= 20, "the slow runner's timing ended with the fast one's cap"
