"""The benchmark stage: eager PyTorch and every shipped artifact timed alike, one at a time, at each batch
size (or at the export shape without a batch dim)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from exporter.backends.registry import BackendResult, OpenContext, open_shipped
from exporter.benchmark.decoder import DecoderLatency, time_decoder
from exporter.benchmark.latency import BatchPlan, LatencyStats, batch_plans, compare_latency
from exporter.benchmark.thread_probe import probe_threads
from exporter.benchmark.trust import LoadWatch, TimingQuality, assess_timing
from exporter.documents.build import lossy_artifacts
from exporter.hf.decoding import DecoderLayout
from exporter.quantize.search import QuantizationResult
from exporter.quantize.types import WEIGHT_ONLY_MODES
from exporter.runners.base import Runner
from exporter.runners.pytorch import EagerRunner
from exporter.stages.memory import weights_bytes
from exporter.stages.records import ProgressListener

if TYPE_CHECKING:
    from exporter.options import ExportOptions

__all__ = ["BenchmarkResult", "benchmark_stage", "drop_slower_lossy", "shipped_runners"]


@dataclass(frozen=True)
class BenchmarkResult:
    """Every timing, and how far to trust them (``exporter.benchmark.trust``)."""

    latency: list[LatencyStats]
    quality: TimingQuality
    decoder: list[DecoderLatency] = field(default_factory=list)
    """A decoder's time to first token and per-token decode time (``benchmark.decoder``)."""


def shipped_runners(
    results: Sequence[BackendResult], quantization: QuantizationResult | None, options: ExportOptions
) -> list[Callable[[], Runner]]:
    """Openers for every backend's shipped artifact (and the lossy models), in registry order."""
    context = OpenContext(options.spec, options.threads)
    openers: list[Callable[[], Runner]] = [partial(open_shipped, r, context) for r in results]
    for spec, chosen in lossy_artifacts(quantization):
        if chosen.path is not None and spec.open is not None:
            config = dict(chosen.config) or None
            openers.append(
                partial(spec.open, chosen.path, OpenContext(options.spec, options.threads, None, config))
            )
    return openers


def benchmark_stage(
    eager: EagerRunner,
    openers: Sequence[Callable[[], Runner]],
    options: ExportOptions,
    listener: ProgressListener,
    load_seconds: dict[str, float],
    *,
    layout: DecoderLayout | None = None,
) -> BenchmarkResult:
    """Time eager and every shipped artifact alike, in alternating blocks per batch size.

    Every runner is open at once and visited in turn (``compare_latency``), so all share the machine's
    drift; each is warmed before its block, which lets an ONNX Runtime session's spinning threads settle.
    A big model's artifacts are timed one at a time beside eager instead (``JOINT_TIMING_BYTES``), eager's
    figures coming from its first pairing.
    The optimize and quantize stages rank with a shorter timing (``decision_timing``); what ships is
    measured here with the full one, so every figure in the latency table comes from one timing. Load
    times go into ``load_seconds``.

    Beside the timing: the load average before and after it, and a short thread probe of eager at each batch
    plan (``probe_threads``); ``assess_timing`` turns them and each timing's p90/p50 into warnings.
    """
    plans = batch_plans(options.spec, options.batch_dim, options.batch_sizes, options.seed)
    results: list[LatencyStats] = []
    decoder: list[DecoderLatency] = []
    order = [eager.name]
    with LoadWatch() as watch:
        probes = []
        for index, plan in enumerate(plans):
            listener.step(f"thread probe: {eager.name} at {plan.label}", index, len(plans))
            probe = probe_threads(eager, plan, options.threads)
            probes += [probe] if probe is not None else []
        groups = (
            [list(openers)] if weights_bytes(eager.module) <= JOINT_TIMING_BYTES else [[o] for o in openers]
        )
        for group in groups or [[]]:
            with contextlib.ExitStack() as stack:
                runners: list[Runner] = [eager]
                for opener in group:
                    started = time.perf_counter()
                    runner = opener()
                    load_seconds[runner.name] = time.perf_counter() - started
                    order.append(runner.name)
                    runners.append(stack.enter_context(runner))
                timed = _time_plans(runners, plans, options, listener)
                rows = _time_decoder(runners, layout, options, listener) if layout is not None else []
            first = group is groups[0] if groups else True
            results += [s for s in timed if first or s.backend != eager.name]  # eager's first timing
            decoder += [r for r in rows if first or r.backend != eager.name]
    baseline = {s.label: s.p50_ms for s in results if s.backend == eager.name}
    for stats in results:
        stats.speedup_vs_eager = baseline[stats.label] / stats.p50_ms if stats.p50_ms > 0 else None
    listener.step("timing done", len(plans), len(plans))
    results.sort(key=lambda s: order.index(s.backend) if s.backend in order else len(order))
    quality = assess_timing(
        results, baseline=eager.name, threads=options.threads, load=watch.load, probes=probes
    )
    decoder.sort(key=lambda r: order.index(r.backend) if r.backend in order else len(order))
    return BenchmarkResult(results, quality, decoder)


JOINT_TIMING_BYTES = 512 * 2**20
"""Past this many bytes of float32 weights, eager is timed beside one artifact at a time (each pair in
alternating blocks) rather than beside all of them at once: every open runtime holds its own copy of the
weights (a 700M model with model.onnx and model.ort.onnx: 8.5 GiB at once, 3.2x the weights)."""


def _time_plans(
    runners: list[Runner], plans: Sequence[BatchPlan], options: ExportOptions, listener: ProgressListener
) -> list[LatencyStats]:
    results: list[LatencyStats] = []
    for index, plan in enumerate(plans):

        def show(runner: Runner, label: str = plan.label, done: int = index) -> None:
            listener.step(f"timing {runner.name} at {label}", done, len(plans))

        results += compare_latency(
            runners, plan, config=options.timing, threads=options.threads, on_block=show
        )
    return results


def _time_decoder(
    runners: list[Runner], layout: DecoderLayout, options: ExportOptions, listener: ProgressListener
) -> list[DecoderLatency]:
    """A decoder's prefill and per-token decode calls, eager (first) against every artifact."""

    def show(runner: Runner, label: str) -> None:
        listener.step(f"timing {runner.name} at {label}", 0, 0)

    return time_decoder(
        runners, layout, config=options.timing, threads=options.threads, seed=options.seed, on_block=show
    )


def drop_slower_lossy(
    latency: list[LatencyStats],
    quantization: QuantizationResult | None,
    notes: list[str],
    decoder: Sequence[DecoderLatency] = (),
) -> list[LatencyStats]:
    """``--quantize int8`` or ``int4``: un-ship a lossy model that the benchmark's full timing found slower
    than its float source at some batch size (for a decoder, also per token at some past length), and drop
    its rows: the quantize stage chose it on a shorter timing, and the latency table must never show a
    shipped lossy model slower than the float model it replaces. Its float source not shipped (not a target)
    or not timed: nothing to compare, it stays."""
    if quantization is None or quantization.options.mode not in WEIGHT_ONLY_MODES:
        return latency  # an explicit mode ships its choice within budget even when slower, flagged
    timings = [(s.backend, s.label, s.p50_ms) for s in latency]
    timings += [(r.backend, f"per token at {r.label}", r.p50_ms) for r in decoder if r.phase == "decode"]
    for spec, chosen in lossy_artifacts(quantization):
        floats = {label: p50 for backend, label, p50 in timings if backend == spec.float_source}
        slower = [
            label
            for backend, label, p50 in timings
            if backend == spec.name and label in floats and p50 >= floats[label]
        ]
        if not slower:
            continue
        chosen.chosen = False
        latency = [s for s in latency if s.backend != spec.name]
        notes.append(
            f"{spec.file} not shipped: the benchmark measured {chosen.name} no faster than "
            f"{spec.float_source} at {', '.join(slower)} (the quantize stage's shorter timing had it faster)"
        )
    return latency
