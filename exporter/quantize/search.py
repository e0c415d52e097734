"""Int8 candidates: build every requested mode, judge each against the float model on held-out samples,
keep sensitive layers in float when a mode misses the budget, time each beside the float ONNX model, and
pick what ships.

Modes (``--quantize``): ``dynamic`` (ONNX Runtime), ``static`` (ONNX Runtime QDQ and torchao PT2E, both
measured), ``qat`` (torchao PT2E with fine-tuning), ``int8`` (all of them; the fastest that meets the budget
ships, and never one slower than float).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter._resolve import resolve_callable
from exporter.benchmark import BatchPlan, LatencyStats, TimingConfig, measure_latency
from exporter.convert.onnx import OnnxConversionRequest, OnnxExporterChoice, convert_to_onnx
from exporter.errors import UsageError, first_line
from exporter.quantize.budget import Int8Comparison, ParityBudget, compare_int8
from exporter.quantize.calibration import SampleSet
from exporter.quantize.onnx_ort import (
    CALIBRATION_METHODS,
    Int8Formats,
    preprocess,
    quantize_dynamic_ort,
    quantize_static_ort,
)
from exporter.quantize.pt2e import quantize_pt2e
from exporter.quantize.sensitivity import LayerError, producers, quantizable_nodes, shortlist
from exporter.runners import EagerRunner, OnnxRuntimeRunner
from exporter.specs import InputSpec, make_inputs, trace_sizes
from exporter.verify import GoldenCase

__all__ = ["Candidate", "QuantMode", "QuantizationResult", "QuantizeOptions", "run_quantization"]


class QuantMode(StrEnum):
    NONE = "none"
    DYNAMIC = "dynamic"
    STATIC = "static"
    QAT = "qat"
    INT8 = "int8"


AUTO_CALIBRATION = ("minmax", "percentile", "entropy")  # --calibration-method auto, in the order tried
PROBE_LIMIT = 24  # layers measured one by one when a mode misses the budget
STEP_WIDTH = 6  # layers tried at each later step of the greedy search

CANDIDATES_FOR: dict[QuantMode, tuple[str, ...]] = {
    QuantMode.DYNAMIC: ("dynamic-ort",),
    QuantMode.STATIC: ("static-ort", "static-pt2e"),
    QuantMode.QAT: ("qat-pt2e",),
    QuantMode.INT8: ("dynamic-ort", "static-ort", "static-pt2e", "qat-pt2e"),
}


@dataclass(frozen=True)
class QuantizeOptions:
    """Settings of the quantize stage (``--quantize`` and friends, or a recipe's ``[quantize]``)."""

    mode: QuantMode = QuantMode.NONE
    calibration: str | None = None
    samples: int = 64
    method: str = "auto"
    min_cosine: float = 0.99
    min_top1: float | None = None
    min_sqnr_db: float | None = None
    max_abs: float | None = None
    max_float_layers: int = 8
    qat_steps: int = 100
    qat_lr: float = 1e-4
    qat_train: str | None = None
    eval_data: str | None = None
    metric: str | None = None

    def __post_init__(self) -> None:
        """Check the budget here, so a bad flag or recipe value fails before minutes of conversion."""
        try:
            object.__setattr__(self, "mode", QuantMode(self.mode))
        except ValueError:
            modes = ", ".join(m.value for m in QuantMode)
            raise UsageError(f"--quantize {self.mode!r} is not a mode: use one of {modes}") from None
        if self.method != "auto" and self.method not in CALIBRATION_METHODS:
            raise UsageError(f"--calibration-method must be auto or one of {', '.join(CALIBRATION_METHODS)}")
        for flag, count, least in (
            ("--calibration-samples", self.samples, 1),
            ("[quantize].max_float_layers", self.max_float_layers, 0),
            ("[quantize].qat_steps", self.qat_steps, 0),
        ):
            if not isinstance(count, int) or isinstance(count, bool) or count < least:
                raise UsageError(f"{flag} {count!r} must be an integer >= {least}")
        bounds: tuple[tuple[str, float | None, bool, float, float, str], ...] = (
            ("--min-cosine", self.min_cosine, False, -1.0, 1.0, "is outside [-1, 1]"),
            ("--min-top1", self.min_top1, True, 0.0, 1.0, "is outside [0, 1]"),
            ("--min-sqnr", self.min_sqnr_db, True, -math.inf, math.inf, "must be a finite number of dB"),
            ("[quantize].max_abs", self.max_abs, True, 0.0, math.inf, "must be a finite number >= 0"),
            ("[quantize].qat_lr", self.qat_lr, False, math.ulp(0.0), math.inf, "must be a finite number > 0"),
        )
        for flag, value, optional, low, high, expected in bounds:
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{flag} {value!r} {expected}")
            if not (math.isfinite(value) and low <= value <= high):
                raise UsageError(f"{flag} {value:g} {expected}")

    @property
    def budget(self) -> ParityBudget:
        return ParityBudget(self.min_cosine, self.min_top1, self.min_sqnr_db, self.max_abs)


@dataclass
class Candidate:
    """One int8 model: how it was made, how far it moved, how big and fast it is next to float."""

    name: str
    engine: str
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    error: str | None = None
    build_seconds: float = 0.0
    size_bytes: int = 0
    outputs: list[Int8Comparison] = field(default_factory=list)
    shape_errors: list[str] = field(default_factory=list)
    float_layers: list[LayerError] = field(default_factory=list)
    latency: list[LatencyStats] = field(default_factory=list)
    p50_ratio: float | None = None
    accuracy: float | None = None
    chosen: bool = False

    @property
    def budget_passed(self) -> bool:
        return (
            self.error is None
            and bool(self.outputs)
            and all(o.passed for o in self.outputs)
            and not self.shape_errors
        )

    @property
    def faster_than_float(self) -> bool:
        return self.p50_ratio is not None and self.p50_ratio < 1.0

    def to_json(self, float_size: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine,
            "settings": self.settings,
            "error": self.error,
            "build_seconds": round(self.build_seconds, 2),
            "size_bytes": self.size_bytes,
            "size_ratio": self.size_bytes / float_size if self.size_bytes and float_size else None,
            "outputs": [asdict(o) for o in self.outputs],
            "shape_errors": self.shape_errors,
            "float_layers": [e.to_json() for e in self.float_layers],
            "latency": [s.to_json() for s in self.latency],
            "p50_ratio_vs_float": self.p50_ratio,
            "accuracy": self.accuracy,
            "budget_passed": self.budget_passed,
            "faster_than_float": self.faster_than_float,
            "chosen": self.chosen,
        }


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

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.chosen), None)

    @property
    def none_built(self) -> bool:
        return all(c.error is not None for c in self.candidates)

    @property
    def passed(self) -> bool:
        """Parity held for what ships; when nothing ships only because int8 was slower, that is no failure."""
        if self.chosen is not None:
            return self.chosen.budget_passed
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
            },
            "float": {
                "size_bytes": self.float_size,
                "latency": [s.to_json() for s in self.float_latency],
                "accuracy": self.float_accuracy,
            },
            "metric": self.options.metric,
            "candidates": [c.to_json(self.float_size) for c in self.candidates],
            "skipped": self.skipped,
            "chosen": chosen.name if chosen else None,
            "passed": self.passed,
            "notes": self.notes,
        }


@dataclass
class QuantizeContext:
    """What every candidate builder needs; built once by ``run_quantization``."""

    options: QuantizeOptions
    module: torch.nn.Module
    spec: InputSpec
    float_onnx: Path
    preprocessed: Path
    work_dir: Path
    formats: Int8Formats
    calibration: SampleSet
    evaluation: SampleSet
    reference: list[list[np.ndarray]]
    golden: Sequence[GoldenCase]
    threads: int
    step: Callable[[str], None]
    dynamic_reduce_range: bool | None = None
    static_method: str | None = None


def _build_dynamic(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """Full-range int8 weights; without VNNI also 7-bit (``reduce_range``), measured once, better kept."""
    if context.dynamic_reduce_range is None:
        context.dynamic_reduce_range = False
        if not context.formats.vnni:
            errors = {}
            for reduce_range in (False, True):
                trial = Candidate("dynamic-ort", "onnxruntime", path=target)
                quantize_dynamic_ort(
                    context.preprocessed, target, context.formats, exclude, reduce_range=reduce_range
                )
                _judge(trial, context)
                errors[reduce_range] = _error(trial)
            context.dynamic_reduce_range = errors[True] < errors[False]
    reduce_range = context.dynamic_reduce_range
    quantize_dynamic_ort(context.preprocessed, target, context.formats, exclude, reduce_range=reduce_range)
    return {"per_channel": True, "weight_type": context.formats.weight, "reduce_range": reduce_range}


def _build_static_ort(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    method = context.static_method or AUTO_CALIBRATION[0]
    if context.options.method != "auto":
        method = context.options.method
    quantize_static_ort(
        context.preprocessed,
        target,
        context.calibration.samples,
        context.formats,
        method=method,
        exclude=exclude,
        cache=context.work_dir / f"calibration-{method}.cache",
    )
    return {
        "format": "QDQ",
        "per_channel": True,
        "activation_type": context.formats.activation,
        "weight_type": context.formats.weight,
        "reduce_range": context.formats.reduce_range_static,
        "calibration_method": method,
    }


def _build_pt2e(context: QuantizeContext, target: Path, qat: bool) -> dict[str, Any]:
    hook = (
        resolve_callable(context.options.qat_train, option="qat_train") if context.options.qat_train else None
    )
    converted = quantize_pt2e(
        context.module,
        context.spec,
        context.calibration.samples,
        qat=qat,
        train_hook=hook,
        steps=context.options.qat_steps,
        lr=context.options.qat_lr,
    )
    example = {
        n: torch.from_numpy(a) for n, a in make_inputs(context.spec, trace_sizes(context.spec), 0).items()
    }
    conversion = convert_to_onnx(
        OnnxConversionRequest(
            module=converted,
            spec=context.spec,
            example_inputs=example,
            probe_inputs=None,
            output_names=_output_names(context.float_onnx),
            work_dir=target.parent / f"{target.stem}_build",
            exporter=OnnxExporterChoice.DYNAMO,
            simplify=False,
        )
    )
    conversion.model_path.replace(target)
    settings: dict[str, Any] = {
        "quantizer": "X86InductorQuantizer",
        "calibration_samples": len(context.calibration.samples),
    }
    if qat:
        settings["training"] = context.options.qat_train or f"distillation, {context.options.qat_steps} steps"
        settings["lr"] = context.options.qat_lr
    return settings


def _output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


_ORT_BUILDERS: dict[str, Callable[[QuantizeContext, Path, Sequence[str]], dict[str, Any]]] = {
    "dynamic-ort": _build_dynamic,
    "static-ort": _build_static_ort,
}
_ENGINES = {
    "dynamic-ort": "onnxruntime.quantization (dynamic)",
    "static-ort": "onnxruntime.quantization (static QDQ)",
    "static-pt2e": "torchao PT2E (static)",
    "qat-pt2e": "torchao PT2E (QAT)",
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
) -> QuantizationResult:
    """Build, judge and time every candidate for ``options.mode``, then mark the one that ships."""
    work_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if calibration.synthetic:
        notes.append(
            "calibration and evaluation used synthetic inputs drawn from the spec: ranges and parity may not "
            "reflect real data; pass --calibration"
        )
    preprocessed = work_dir / "preprocessed.onnx"
    step("ONNX Runtime pre-processing")
    note = preprocess(float_onnx, preprocessed)
    if note:
        notes.append(note)
    eager = EagerRunner(module, spec.names)
    reference = [eager.run(sample) for sample in evaluation.samples]
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
        reference=reference,
        golden=golden,
        threads=threads,
        step=step,
    )
    metric = resolve_callable(options.metric, option="metric") if options.metric else None
    float_accuracy = _accuracy(metric, reference, evaluation)
    candidates: list[Candidate] = []
    skipped: dict[str, str] = {}
    for name in CANDIDATES_FOR[options.mode]:
        reason = _skip_reason(name, options.mode, candidates)
        if reason is not None:
            skipped[name] = reason
            continue
        step(f"building {name}")
        candidate = _build(name, context)
        if candidate.path is not None and metric is not None:
            runner = OnnxRuntimeRunner(candidate.path, threads)
            candidate.accuracy = _accuracy(metric, [runner.run(s) for s in evaluation.samples], evaluation)
            del runner
        candidates.append(candidate)
    step("timing float and int8 ONNX models")
    float_latency = _time_all(float_onnx, candidates, plans, timing, threads)
    _choose(options.mode, candidates, notes)
    return QuantizationResult(
        options,
        formats,
        calibration,
        evaluation,
        float_onnx.stat().st_size,
        float_latency,
        float_accuracy,
        candidates,
        notes,
        skipped,
    )


def _skip_reason(name: str, mode: QuantMode, built: Sequence[Candidate]) -> str | None:
    """Why ``--quantize int8`` need not build ``name``, or None.

    QAT ends in the same int8 graph as static PT2E (same quantizer, same converted ops), so it cannot be
    faster; it only buys accuracy, at the cost of training (minutes on an encoder). When static PT2E
    already meets the budget there is nothing for it to buy. ``--quantize qat`` always runs it.
    """
    if mode is not QuantMode.INT8 or name != "qat-pt2e":
        return None
    static = next((c for c in built if c.name == "static-pt2e"), None)
    if static is not None and static.budget_passed:
        return (
            "not run: static-pt2e already meets the budget, and QAT ends in the same int8 graph, so it could "
            "only add accuracy, not speed (--quantize qat runs it)"
        )
    return None


def _build(name: str, context: QuantizeContext) -> Candidate:
    candidate = Candidate(name, _ENGINES[name])
    target = context.work_dir / f"{name}.onnx"
    started = time.perf_counter()
    try:
        if name in _ORT_BUILDERS:
            candidate.settings = _ORT_BUILDERS[name](context, target, ())
        else:
            candidate.settings = _build_pt2e(context, target, qat=name.startswith("qat"))
        candidate.path = target
        _judge(candidate, context)
        if name == "static-ort" and context.options.method == "auto":
            _choose_calibration(candidate, context)
        if not candidate.budget_passed and name in _ORT_BUILDERS and not candidate.shape_errors:
            _keep_sensitive_layers_in_float(candidate, context)
    except Exception as error:
        candidate.error = f"{type(error).__name__}: {first_line(error)}"
        candidate.path = None
    candidate.build_seconds = time.perf_counter() - started
    if candidate.path is not None:
        candidate.size_bytes = candidate.path.stat().st_size
    gc.collect()
    return candidate


def _judge(candidate: Candidate, context: QuantizeContext) -> None:
    """Parity on held-out samples against eager float, and the right shapes at every golden shape case."""
    assert candidate.path is not None
    runner = OnnxRuntimeRunner(candidate.path, context.threads)
    outputs = [runner.run(sample) for sample in context.evaluation.samples]
    names = context.golden[0].output_names
    candidate.outputs = [
        compare_int8(name, [o[i] for o in outputs], [r[i] for r in context.reference], context.options.budget)
        for i, name in enumerate(names)
    ]
    candidate.shape_errors = []
    for case in context.golden:
        try:
            produced = runner.run(case.inputs)
        except Exception as error:
            candidate.shape_errors.append(f"{case.case.name}: {first_line(error)}")
            continue
        wrong = [
            f"{name} {list(a.shape)} != {list(b.shape)}"
            for name, a, b in zip(names, produced, case.outputs, strict=False)
            if a.shape != b.shape
        ]
        if wrong:
            candidate.shape_errors.append(f"{case.case.name}: {', '.join(wrong)}")
    del runner


def _error(candidate: Candidate) -> float:
    """1 - the worst per-sample cosine over outputs: the quantity the default budget gates."""
    return max((1.0 - o.min_cosine for o in candidate.outputs), default=1.0)


def _choose_calibration(candidate: Candidate, context: QuantizeContext) -> None:
    """``--calibration-method auto``: when min-max ranges miss the budget, percentile and entropy ranges are
    tried (in that order, stopping at the first within budget) and the most accurate is kept, before any
    layer is kept in float: a float layer inside an int8 chain costs a dequantize/quantize pair and its
    float kernel (on a ResNet-18 with an over-fitted head, percentile ranges lifted top-1 agreement over 64
    images from 95.3 % to 98.4 % at the same min cosine)."""
    assert candidate.path is not None
    context.static_method = AUTO_CALIBRATION[0]
    if candidate.budget_passed or candidate.shape_errors:
        return
    best = (_error(candidate), AUTO_CALIBRATION[0], candidate.settings)
    tried = [f"{AUTO_CALIBRATION[0]} {_describe_error(candidate)}"]
    for method in AUTO_CALIBRATION[1:]:
        context.step(f"static-ort: {method} calibration")
        context.static_method = method
        settings = _build_static_ort(context, candidate.path, ())
        _judge(candidate, context)
        tried.append(f"{method} {_describe_error(candidate)}")
        if _error(candidate) < best[0]:
            best = (_error(candidate), method, settings)
        if candidate.budget_passed:
            break
    context.static_method = best[1]
    if context.static_method != method:
        _build_static_ort(context, candidate.path, ())
        _judge(candidate, context)
    candidate.settings = best[2] | {"calibration_tried": "; ".join(tried)}


def _describe_error(candidate: Candidate) -> str:
    return f"(min cosine {1.0 - _error(candidate):.4f})"


def _keep_sensitive_layers_in_float(candidate: Candidate, context: QuantizeContext) -> None:
    """Greedy forward selection of layers to keep in float, each step measured by re-quantizing.

    A move keeps one layer in float, or a layer together with the layer producing its input: an outlier
    tensor's int8 range is set at both ends, so often only the pair helps. Step one tries every
    shortlisted layer (a proxy picks ``PROBE_LIMIT`` when there are more); later steps the ``STEP_WIDTH``
    best remaining. Stops when the budget holds, when nothing helps, or at ``max_float_layers`` / half the
    layers (beyond that little int8 is left to ship).
    """
    assert candidate.path is not None
    builder = _ORT_BUILDERS[candidate.name]
    nodes = dict(quantizable_nodes(context.preprocessed))
    context.step(f"{candidate.name}: shortlisting sensitive layers")
    pool = shortlist(
        context.preprocessed, candidate.path, context.evaluation.samples[:8], context.threads, PROBE_LIMIT
    )
    pool += [n for n in nodes if n not in pool][: max(0, PROBE_LIMIT - len(pool))]
    limit = min(context.options.max_float_layers, max(1, len(nodes) // 2))
    trial = Candidate(
        candidate.name, candidate.engine, path=context.work_dir / f"{candidate.name}.trial.onnx"
    )
    assert trial.path is not None
    upstream = producers(context.preprocessed)
    kept: list[LayerError] = []
    baseline = error = _error(candidate)
    while len(kept) < limit and pool:
        names = [e.node for e in kept]
        moves: list[tuple[str, ...]] = []
        for node in pool[: len(pool) if not kept else STEP_WIDTH]:
            moves.append((node,))
            moves.extend((p, node) for p in upstream.get(node, []) if p not in names and p != node)
        tried: list[tuple[float, tuple[str, ...]]] = []
        for move in moves:
            if len(kept) + len(move) > limit:
                continue
            context.step(f"{candidate.name}: trying {', '.join(move)} in float")
            builder(context, trial.path, names + list(move))
            _judge(trial, context)
            tried.append((_error(trial), move))
        if not tried:
            break
        tried.sort(key=lambda item: item[0])  # stable: ties keep the proxy's order
        best_error, best = tried[0]
        if best_error >= error:
            break  # nothing left helps
        kept += [LayerError(node, nodes[node], error, best_error) for node in best]
        pool = [node for node in pool if node not in best]
        error = best_error
        builder(context, candidate.path, [e.node for e in kept])
        candidate.float_layers = list(kept)
        _judge(candidate, context)
        if candidate.budget_passed:
            return
    if kept and error >= baseline:  # nothing helped: ship no float layers for nothing
        builder(context, candidate.path, [])
        candidate.float_layers = []
        _judge(candidate, context)


def _time_all(
    float_onnx: Path,
    candidates: Sequence[Candidate],
    plans: Sequence[BatchPlan],
    timing: TimingConfig,
    threads: int,
) -> list[LatencyStats]:
    """Float and every built candidate in ONNX Runtime, side by side, one session alive at a time."""
    timed = [c for c in candidates if c.path is not None and not c.shape_errors]
    models = [("onnxruntime", float_onnx)] + [(f"int8 {c.name}", c.path) for c in timed]
    stats: dict[str, list[LatencyStats]] = {}
    for label, path in models:
        assert path is not None
        runner = OnnxRuntimeRunner(path, threads, name=label)
        stats[label] = [
            measure_latency(
                runner, plan.inputs, config=timing, threads=threads, label=plan.label, batch=plan.batch
            )
            for plan in plans
        ]
        del runner
        gc.collect()
    float_stats = stats["onnxruntime"]
    for candidate in timed:
        candidate.latency = stats[f"int8 {candidate.name}"]
        ratios = [
            c.p50_ms / f.p50_ms for c, f in zip(candidate.latency, float_stats, strict=True) if f.p50_ms > 0
        ]
        candidate.p50_ratio = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
        for c, f in zip(candidate.latency, float_stats, strict=True):
            c.speedup_vs_float = f.p50_ms / c.p50_ms if c.p50_ms > 0 else None
    return float_stats


def _choose(mode: QuantMode, candidates: list[Candidate], notes: list[str]) -> None:
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


def _accuracy(
    metric: Callable[..., Any] | None, outputs: Sequence[list[np.ndarray]], evaluation: SampleSet
) -> float | None:
    if metric is None or evaluation.labels is None:
        return None
    return float(metric(list(outputs), list(evaluation.labels)))
