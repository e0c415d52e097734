"""Int8 search: build every candidate the mode selects from the registry, judge each against the float
model on held-out samples, repair those that miss the budget, time each beside the float ONNX model, and
pick what ships.

Modes (``--quantize``): ``dynamic`` (ONNX Runtime), ``static`` (ONNX Runtime QDQ and torchao PT2E, both
measured), ``qat`` (torchao PT2E with fine-tuning), ``int8`` (all of them; the fastest that meets the budget
ships, and never one slower than float). Which candidate belongs to which mode, how it is built and
repaired, and when it is skipped live in ``candidates.py``; the repairs in ``repairs.py``; timing and the
choice in ``selection.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter._heap import page_out, release_freed_memory
from exporter.benchmark.latency import BatchPlan, LatencyStats, TimingConfig, compare_latency
from exporter.convert.onnx_files import model_files
from exporter.errors import UsageError, first_line, full_text
from exporter.hf.facts import HfFacts
from exporter.loading.resolve import resolve_callable
from exporter.quantize.calibration import SampleSet
from exporter.quantize.candidates import CandidateSpec, Requirement, candidates_for
from exporter.quantize.decoder import DecoderJudging, decode_plan, prepare_decoder
from exporter.quantize.judge import judge, open_candidate, open_model
from exporter.quantize.onnx_ort import Int8Formats
from exporter.quantize.preprocess import external_output, preprocess
from exporter.quantize.selection import choose_candidate, time_candidates
from exporter.quantize.shipping import REFERENCE_RUNTIME
from exporter.quantize.types import Candidate, QuantizeContext, QuantizeOptions, QuantMode
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec
from exporter.verify.parity import GoldenCase

__all__ = [
    "NEEDS_REAL_DATA",
    "SYNTHETIC_ONLY",
    "Candidate",
    "QuantMode",
    "QuantizationResult",
    "QuantizeOptions",
    "build_candidate",
    "run_quantization",
]


SYNTHETIC_ONLY = (
    "lossy candidates were judged on synthetic inputs only (drawn from the input spec): parity on real data "
    "is unproven; prove it with --calibration FILE.npz of real inputs (--require-real-data makes this exit 2)"
)
NEEDS_REAL_DATA = (
    "not built: its int8 ranges come from calibration, and without real calibration data (--calibration, "
    "or a recipe's [quantize].calibration) they would be the ranges of noise"
)


NOT_REPAIRED_DECODER = (
    "not repaired: its repairs choose layers to keep in float by their error on synthetic samples, which do "
    "not gate a decoder (its generation does); on a 12 M-parameter Llama the search took 85 s and ended "
    "below the token-match floor still"
)


@dataclass
class QuantizationResult:
    options: QuantizeOptions
    formats: Int8Formats
    calibration: SampleSet
    evaluation: SampleSet
    float_size: int
    float_latency: list[LatencyStats]
    float_accuracy: float | None
    candidates: list[Candidate]
    notes: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    float_latency_by_runtime: dict[str, list[LatencyStats]] = field(default_factory=dict)
    """The float model's figures in runtimes other than the reference (OpenVINO), timed beside candidates."""
    float_onnx: Path | None = None
    """The float ONNX model the candidates started from and were timed against."""

    @property
    def chosen(self) -> Candidate | None:
        """The reference runtime's choice (ONNX Runtime's, shipped as ``model.int8.onnx``)."""
        return self.chosen_for(REFERENCE_RUNTIME)

    def chosen_for(self, runtime: str) -> Candidate | None:
        return next((c for c in self.candidates if c.chosen and c.runtime == runtime), None)

    @property
    def shipped(self) -> list[Candidate]:
        """Every chosen candidate, one per runtime."""
        return [c for c in self.candidates if c.chosen]

    @property
    def fastest(self) -> Candidate | None:
        """The fastest candidate within budget across runtimes, by p50 at the first batch plan."""
        within = [c for c in self.candidates if c.budget_passed and c.latency]
        return min(within, key=lambda c: c.latency[0].p50_ms, default=None)

    @property
    def synthetic_only(self) -> bool:
        """The candidates were judged on inputs drawn from the spec, not on real data (a decoder's are judged
        by generation from its golden prompts: tokenized text)."""
        return self.evaluation.synthetic and not any(c.decoder for c in self.candidates)

    @property
    def none_built(self) -> bool:
        return all(c.error is not None for c in self.candidates)

    @property
    def passed(self) -> bool:
        """Parity held for what ships; when nothing ships only because int8 was slower, that is no failure."""
        if self.shipped:
            return all(c.budget_passed for c in self.shipped)
        return any(c.budget_passed for c in self.candidates)

    def to_json(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "mode": self.options.mode.value,
            "budget": asdict(self.options.budget) | {"text": self.options.budget.describe()},
            "formats": asdict(self.formats),
            "calibration": {
                "source": self.calibration.source,
                "synthetic": self.calibration.synthetic,
                "samples": len(self.calibration.samples),
                "evaluation_samples": len(self.evaluation.samples),
                "evaluation_source": self.evaluation.source,
                "method": self.options.method,
                "judged_on": "synthetic" if self.synthetic_only else "real",
            },
            "float": {
                "size_bytes": self.float_size,
                "latency": [s.to_json() for s in self.float_latency],
                "accuracy": self.float_accuracy,
                "latency_by_runtime": {
                    runtime: [s.to_json() for s in stats]
                    for runtime, stats in self.float_latency_by_runtime.items()
                },
            },
            "metric": self.options.metric,
            "candidates": [c.to_json(self.float_size) for c in self.candidates],
            "skipped": self.skipped,
            "chosen": chosen.name if chosen else None,
            "shipped": {c.runtime: c.name for c in self.shipped},
            "fastest": self.fastest.name if self.fastest else None,
            "passed": self.passed,
            "notes": self.notes,
        }


def run_quantization(
    options: QuantizeOptions,
    *,
    module: torch.nn.Module,
    spec: InputSpec,
    float_onnx: Path,
    golden: Sequence[GoldenCase],
    calibration: SampleSet,
    evaluation: SampleSet,
    formats: Int8Formats,
    plans: Sequence[BatchPlan],
    timing: TimingConfig,
    threads: int,
    work_dir: Path,
    step: Callable[[str], None],
    targets: Sequence[str] = ("onnx",),
    hf: HfFacts | None = None,
) -> QuantizationResult:
    """Build, judge and time every candidate for ``options.mode``, then mark what ships per runtime.

    A decoder with a KV cache (``hf.is_decoder``) builds the decoder candidates, judges each by generation
    too, and is timed per token (one decode step) instead of at ``plans``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    specs = _specs_for(options.mode, hf)
    decoder: DecoderJudging | None = None
    if hf is not None and hf.layout is not None:
        step("the float decoder's greedy tokens and its decode step")
        decoder, plans = _decoder_judging(options, hf, float_onnx, threads)
        notes.append(decoder.describe(plans[0].label))
    if evaluation.synthetic and decoder is None:  # a decoder is judged on its golden prompts' real tokens
        notes.append(SYNTHETIC_ONLY)
    preprocessed = work_dir / "preprocessed.onnx"
    step("ONNX Runtime pre-processing")
    note = preprocess(float_onnx, preprocessed)
    release_freed_memory()
    if note:
        notes.append(note)
    eager = EagerRunner(module, spec.names)
    context = QuantizeContext(
        options=options,
        module=module,
        spec=spec,
        float_onnx=float_onnx,
        preprocessed=preprocessed,
        work_dir=work_dir,
        formats=formats,
        calibration=calibration,
        evaluation=evaluation,
        reference=_reference_outputs(eager, evaluation),
        golden=golden,
        threads=threads,
        step=step,
        targets=tuple(targets),
        rank_plan=plans[0] if plans else None,
        external_data=external_output(float_onnx),
        decoder=decoder,
    )
    metric = resolve_callable(options.metric, option="metric") if options.metric else None
    float_accuracy = _accuracy(metric, context.reference, evaluation)
    candidates, skipped = _build_all(specs, context, metric)
    step("timing the float models and the lossy candidates")
    float_models = _float_models(float_onnx, specs, candidates, work_dir)
    floats = time_candidates(float_models, candidates, plans, timing, threads)
    choose_candidate(options.mode, candidates, notes)
    return QuantizationResult(
        options,
        formats,
        calibration,
        evaluation,
        sum(f.stat().st_size for f in model_files(float_onnx)),
        floats[REFERENCE_RUNTIME],
        float_accuracy,
        candidates,
        notes,
        skipped,
        {runtime: stats for runtime, stats in floats.items() if runtime != REFERENCE_RUNTIME},
        float_onnx,
    )


def _specs_for(mode: QuantMode, hf: HfFacts | None) -> list[CandidateSpec]:
    """The candidates ``mode`` builds for this kind of model (a decoder with a KV cache or not).

    Raises:
        UsageError: none, naming the modes that build some.
    """
    decoder = hf is not None and hf.is_decoder
    specs = candidates_for(mode, decoder)
    if not specs:
        kind = "a decoder with a KV cache (weight-only modes)" if decoder else "a model that is not a decoder"
        modes = [m.value for m in QuantMode if m is not QuantMode.NONE and candidates_for(m, decoder)]
        raise UsageError(f"--quantize {mode.value} has no candidate for {kind}: use {' or '.join(modes)}")
    return specs


def _decoder_judging(
    options: QuantizeOptions, hf: HfFacts, float_onnx: Path, threads: int
) -> tuple[DecoderJudging, list[BatchPlan]]:
    """The float ONNX model's generations (``decoder.prepare_decoder``) and the decode step every candidate
    is timed on, per token, instead of the spec's batch plans."""
    assert hf.layout is not None
    with open_model(float_onnx, REFERENCE_RUNTIME, threads, {}, "float") as runner:
        judging = prepare_decoder(
            runner, hf.layout, hf.generation, hf.max_new_tokens, options.token_match_floor
        )
        plan = decode_plan(runner, hf.layout, seed=0)
    return judging, [plan]


def _reference_outputs(eager: EagerRunner, evaluation: SampleSet) -> list[list[np.ndarray]]:
    """Eager's outputs on the evaluation samples; its weights (the checkpoint's mapped pages) are paged out
    again after (``exporter._heap.page_out``), so the candidates are built without them resident."""
    outputs = [eager.run(sample) for sample in evaluation.samples]
    page_out(eager.module)
    return outputs


def _float_models(
    float_onnx: Path, specs: Sequence[CandidateSpec], candidates: Sequence[Candidate], work_dir: Path
) -> dict[str, Path]:
    """Each runtime's float model, which its lossy candidates must beat: the float ONNX model in the
    reference runtime, and for a runtime whose candidates were built, what their spec's ``float_model``
    makes of it (OpenVINO: its IR, compiled with the float32 hint when opened)."""
    models: dict[str, Path] = {REFERENCE_RUNTIME: float_onnx}
    built = {c.runtime for c in candidates if c.path is not None}
    for spec in specs:
        if spec.runtime in built and spec.runtime not in models:
            make = spec.float_model
            models[spec.runtime] = float_onnx if make is None else make(float_onnx, work_dir)
    return models


def _build_all(
    specs: Sequence[CandidateSpec], context: QuantizeContext, metric: Callable[..., Any] | None
) -> tuple[list[Candidate], dict[str, str]]:
    """Every spec in order, unless its skip rule says why not given those built before it."""
    candidates: list[Candidate] = []
    skipped: dict[str, str] = {}
    for spec in specs:
        reason = spec.unavailable(context) if spec.unavailable is not None else None
        if reason is None and context.calibration.synthetic and Requirement.CALIBRATION_DATA in spec.needs:
            reason = NEEDS_REAL_DATA
        if reason is None and spec.skip is not None:
            reason = spec.skip(context.options.mode, candidates)
        if reason is not None:
            skipped[spec.name] = reason
            continue
        context.step(f"building {spec.name}")
        candidate = build_candidate(spec, context)
        context.built.append(candidate)
        if candidate.path is not None and metric is not None:
            with open_candidate(candidate, context.threads) as runner:
                outputs = [runner.run(s) for s in context.evaluation.samples]
            candidate.accuracy = _accuracy(metric, outputs, context.evaluation)
        candidates.append(candidate)
    return candidates, skipped


def build_candidate(spec: CandidateSpec, context: QuantizeContext) -> Candidate:
    """Build, judge and repair one candidate; a failure is recorded on it, not raised."""
    candidate = Candidate(spec.name, spec.engine, runtime=spec.runtime)
    candidate.config = spec.config(context) if spec.config is not None else {}
    target = context.work_dir / f"{spec.name}{spec.suffix}"
    started = time.perf_counter()
    try:
        candidate.settings = spec.build(context, target, ())
        candidate.path = target
        judge(candidate, context)
        hopeless = None
        if spec.repairs and not candidate.budget_passed:
            hopeless = (
                NOT_REPAIRED_DECODER if context.decoder is not None else _cannot_win(candidate, context)
            )
        if hopeless is not None:
            candidate.settings = {**candidate.settings, "repairs_skipped": hopeless}
        for repair in spec.repairs if hopeless is None else ():
            repair(candidate, spec.build, context)
    except Exception as error:
        candidate.error = f"{type(error).__name__}: {first_line(error)}"
        candidate.explanation = full_text(error)
        candidate.path = None
    candidate.build_seconds = time.perf_counter() - started
    if candidate.path is not None:
        candidate.size_bytes = sum(f.stat().st_size for f in _files_of(candidate.path))
    release_freed_memory()
    return candidate


def _files_of(path: Path) -> list[Path]:
    """A built model's files: an IR's ``.xml`` and ``.bin``, an ONNX model and its one ``.data``."""
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    return model_files(path)


RACE_TIMING = TimingConfig(warmup=2, min_runs=8, min_seconds=0.3, max_runs=200, max_seconds=2.0)


def _cannot_win(candidate: Candidate, context: QuantizeContext) -> str | None:
    """Why repairing ``candidate`` is pointless, or None: every repair keeps its int8 graph's speed or slows
    it (a calibration method changes ranges only; a float layer adds its kernel and a dequantize/quantize
    pair), so when the all-int8 model is already no faster at the first batch plan than a candidate of the
    same runtime that meets the budget, no repair can make it the one that ships. On the trained encoder the
    repairs of static-ort took 60 of 157 s and ended slower than dynamic-ort."""
    rivals = [
        c
        for c in context.built
        if c.runtime == candidate.runtime and c.budget_passed and c.path is not None and not c.shape_errors
    ]
    if not rivals or context.rank_plan is None or candidate.path is None:
        return None
    context.step(f"{candidate.name}: racing it against {', '.join(c.name for c in rivals)}")
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(open_candidate(c, context.threads)) for c in (candidate, *rivals)]
        stats = compare_latency(runners, context.rank_plan, config=RACE_TIMING, threads=context.threads)
    mine, (best, best_stats) = stats[0], min(zip(rivals, stats[1:], strict=True), key=lambda p: p[1].p50_ms)
    if mine.p50_ms < best_stats.p50_ms:
        return None
    return (
        f"not repaired: all-int8 it is already no faster than {best.name}, which meets the budget "
        f"(p50 {mine.p50_ms:.3g} vs {best_stats.p50_ms:.3g} ms at {context.rank_plan.label}), and a repair "
        "can only keep its speed or slow it"
    )


def _accuracy(
    metric: Callable[..., Any] | None, outputs: Sequence[list[np.ndarray]], evaluation: SampleSet
) -> float | None:
    if metric is None or evaluation.labels is None:
        return None
    return float(metric(list(outputs), list(evaluation.labels)))
