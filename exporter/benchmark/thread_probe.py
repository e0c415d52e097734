"""The thread probe: eager PyTorch timed briefly at 1 thread and at the configured threads.

When more threads are markedly slower than one, the threads fight for the cores (other work, or more
threads than cores), and every speedup against eager mostly measures that fight. The probe runs a handful
of calls per side in alternating blocks (``compare_latency``, the one timing helper) at each batch plan,
because the fight depends on the batch (on a busy 2-core machine a tiny MLP's 2 threads were as fast as 1
at batch 1 and 1300x slower at batch 2); it adds about 10-20 calls of the model per batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from exporter.benchmark.latency import BatchPlan, TimingConfig, compare_latency
from exporter.benchmark.trust import ThreadProbe
from exporter.runners.base import Runner

__all__ = ["PROBE_TIMING", "probe_threads"]

PROBE_TIMING = TimingConfig(
    warmup=1,
    min_runs=6,
    min_seconds=0.0,
    max_runs=30,
    max_seconds=0.5,
    block_calls=3,
    block_seconds=0.0,
    warm_seconds=0.02,
    enough_seconds=0.5,
    warmup_seconds=0.2,
)
"""Two rounds of 3 calls per side (one round when a call takes over ~80 ms): enough to see a 1.5x gap."""


class _WithThreads(Runner):
    """Another runner's model run with torch's intra-op threads set to ``threads`` (for the probe only)."""

    def __init__(self, inner: Runner, threads: int) -> None:
        super().__init__(inner.input_names)
        self.inner, self.threads = inner, threads
        self.name = f"{inner.name} ({threads} thread{'' if threads == 1 else 's'})"

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.inner.run(inputs)


def probe_threads(
    eager: Runner, plan: BatchPlan, threads: int, config: TimingConfig = PROBE_TIMING
) -> ThreadProbe | None:
    """p50 of ``eager`` on ``plan`` with 1 thread and with ``threads``; None when ``threads`` is 1.

    torch's thread count is set back to ``threads`` afterwards, also when the model raises.
    """
    if threads <= 1:
        return None
    sides = [_WithThreads(eager, 1), _WithThreads(eager, threads)]
    try:
        one, many = compare_latency(sides, plan, config=config, threads=threads)
    finally:
        torch.set_num_threads(threads)
    return ThreadProbe(eager.name, plan.label, threads, one.p50_ms, many.p50_ms)
