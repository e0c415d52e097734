"""A decoder's latency as its users feel it: time to first token (one prefill call over the whole prompt,
at a few prompt lengths) and the time of each next token (one decode call with the cache, at a few past
lengths), for every shipped artifact against eager transformers with its own cache, alternated in blocks
as every timing here is (``latency.compare_latency``).

Every runner gets the same feed: the decoder contract's inputs (``hf.decoding.step_inputs``), a past of
seeded random values (a call's time does not depend on them). Eager is the loaded wrapper module, which
builds transformers' ``DynamicCache`` from the past and appends to it, as ``generate`` does per step.
Measurements for the report, never assertions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import StrictInt, StrictStr
from pydantic import dataclasses as pydantic_dataclasses

from exporter.benchmark.latency import BatchPlan, TimingConfig, compare_latency
from exporter.documents.fields import ENTRY, Number
from exporter.hf.decoding import DecoderLayout, empty_past, step_inputs

if TYPE_CHECKING:
    from exporter.runners.base import Runner

__all__ = ["PAST_LENGTHS", "PROMPT_LENGTHS", "DecoderLatency", "decoder_plans", "time_decoder"]

PROMPT_LENGTHS = (8, 32, 128)
"""Prompt lengths timed for the time to first token (clipped to the model's context)."""
PAST_LENGTHS = (16, 64, 128)
"""Cached positions before the timed decode call (clipped to the context less one)."""


@pydantic_dataclasses.dataclass(config=ENTRY)
class DecoderLatency:
    """One runner's timing of one call: a prefill of ``tokens`` prompt tokens, or a decode of one token
    after ``tokens`` cached positions. report.json's and the manifest's ``decoder_latency`` rows."""

    backend: StrictStr
    phase: Literal["prefill", "decode"]
    tokens: StrictInt
    threads: StrictInt
    runs: StrictInt
    p50_ms: Number
    p90_ms: Number
    p99_ms: Number
    tokens_per_s: Number
    """prefill: prompt tokens per second at p50; decode: generated tokens per second at p50 (1000 / p50)."""
    speedup_vs_eager: Number | None = None

    @property
    def label(self) -> str:
        return f"prompt {self.tokens}" if self.phase == "prefill" else f"past {self.tokens}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decoder_plans(
    layout: DecoderLayout, seed: int
) -> list[tuple[Literal["prefill", "decode"], int, BatchPlan]]:
    """The calls to time: a prefill at each prompt length and a decode at each past length, within the
    model's context (``max_positions``), seeded."""
    rng = np.random.default_rng(seed + 2000)
    context = layout.max_positions
    prompts = sorted({min(n, context) for n in PROMPT_LENGTHS})
    pasts = sorted({min(n, context - 1) for n in PAST_LENGTHS if context > 1})
    plans: list[tuple[Literal["prefill", "decode"], int, BatchPlan]] = []
    for length in prompts:
        ids = rng.integers(0, layout.vocab_size, size=(1, length), dtype=np.int64)
        feed = step_inputs(layout, ids, empty_past(layout), 0)
        plans.append(("prefill", length, BatchPlan(f"prompt {length}", None, feed)))
    for length in pasts:
        shape = (1, layout.kv_heads, length, layout.head_dim)
        past = [rng.standard_normal(shape).astype(layout.cache_dtype) for _ in layout.past_names]
        ids = rng.integers(0, layout.vocab_size, size=(1, 1), dtype=np.int64)
        plans.append(
            ("decode", length, BatchPlan(f"past {length}", None, step_inputs(layout, ids, past, length)))
        )
    return plans


def time_decoder(
    runners: Sequence[Runner],
    layout: DecoderLayout,
    *,
    config: TimingConfig,
    threads: int,
    seed: int,
    on_block: Callable[[Runner, str], None] | None = None,
) -> list[DecoderLatency]:
    """Every runner at every prefill and decode plan, alternated in blocks per plan; the first runner is
    the baseline of ``speedup_vs_eager`` (eager transformers)."""
    rows: list[DecoderLatency] = []
    for phase, tokens, plan in decoder_plans(layout, seed):

        def show(runner: Runner, label: str = plan.label) -> None:
            if on_block is not None:
                on_block(runner, label)

        timed = compare_latency(runners, plan, config=config, threads=threads, on_block=show)
        baseline = timed[0].p50_ms if timed else 0.0
        for stats in timed:
            p50 = stats.p50_ms
            per_second = (tokens if phase == "prefill" else 1) * 1000.0 / p50 if p50 > 0 else float("inf")
            rows.append(
                DecoderLatency(
                    backend=stats.backend,
                    phase=phase,
                    tokens=tokens,
                    threads=threads,
                    runs=stats.runs,
                    p50_ms=p50,
                    p90_ms=stats.p90_ms,
                    p99_ms=stats.p99_ms,
                    tokens_per_s=per_second,
                    speedup_vs_eager=baseline / p50 if p50 > 0 else None,
                )
            )
    return rows
