"""The ONNX model's own stages: graph optimization (each step verified and timed) and int8 quantization
(candidates built, judged by the parity budget and timed beside float)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from exporter.backends.onnxruntime import ONNX, ORT_OPTIMIZED
from exporter.backends.registry import BackendResult
from exporter.benchmark.latency import TimingConfig, batch_plans
from exporter.errors import ConversionError, UsageError
from exporter.loading.checkpoint import LoadedModel
from exporter.optimize.optimizer import (
    DECISION_TIMING,
    RUNTIME_SPECIFIC_RECORD,
    OptimizationResult,
    OptimizeRequest,
    infer_attention_shape,
    optimize_onnx,
)
from exporter.quantize.calibration import SampleSet, load_samples
from exporter.quantize.candidates import Requirement, candidates_for
from exporter.quantize.onnx_ort import choose_formats
from exporter.quantize.search import QuantizationResult, run_quantization
from exporter.quantize.types import QuantizeOptions
from exporter.stages.records import ProgressListener, StageStatus, StageTracker
from exporter.verify.parity import GoldenCase

if TYPE_CHECKING:
    from exporter.options import ExportOptions

__all__ = ["int8_samples", "optimize_stage", "quantize_stage"]


def decision_timing(options: ExportOptions) -> TimingConfig:
    """The timing that ranks variants and candidates: shorter than the benchmark's (which then measures
    what ships with the full config), unless the run asked for an even shorter one (tests)."""
    fast = options.timing.min_seconds < DECISION_TIMING.min_seconds
    return options.timing if fast else DECISION_TIMING


def optimize_stage(
    stages: StageTracker,
    *,
    options: ExportOptions,
    module: torch.nn.Module,
    onnx_backend: BackendResult | None,
    alternative: Callable[[], Path] | None,
    golden: Sequence[GoldenCase],
    work_dir: Path,
    listener: ProgressListener,
) -> tuple[OptimizationResult | None, BackendResult | None]:
    """Graph optimization of the verified float ONNX model: the ONNX backend then ships the fastest portable
    result; a faster ONNX Runtime-specific one comes back as its own backend result (``model.ort.onnx``),
    for the pipeline to verify-list, time and write like any other artifact."""
    if onnx_backend is None or onnx_backend.path is None:
        stages.skip("optimize", "no ONNX target")
        return None, None
    if not onnx_backend.passed:
        stages.skip("optimize", "the float ONNX model failed verification")
        return None, None
    if "none" in options.optimization.steps:
        stages.skip("optimize", "--optimize none")
        return None, None
    settings = options.optimization
    if not settings.num_heads or not settings.hidden_size:
        heads, hidden = infer_attention_shape(module)
        settings = replace(
            settings, num_heads=settings.num_heads or heads, hidden_size=settings.hidden_size or hidden
        )
    request = OptimizeRequest(
        model=onnx_backend.path,
        label=onnx_backend.shipped,
        parity=onnx_backend.shipped_parity,
        golden=golden,
        tolerance=options.tolerance,
        plans=batch_plans(options.spec, options.batch_dim, options.batch_sizes, options.seed),
        threads=options.threads,
        work_dir=work_dir,
        options=settings,
        alternative=alternative,
        timing=decision_timing(options),
    )
    with stages.run("optimize") as record:
        result = optimize_onnx(request, step=lambda message: listener.step(message, 0, 0))
        runtime_specific = _runtime_specific_backend(result)
        moved = result.runtime_specific.parity if result.runtime_specific is not None else None
        onnx_backend.parity += [p for p in result.parity if p is not moved]  # listed once, under its artifact
        portable = result.portable
        onnx_backend.shipped = portable.label
        onnx_backend.path = portable.path
        onnx_backend.conversion = {**onnx_backend.conversion, "shipped": portable.label}
        kept = [r.name for r in result.records if r.kept and r.name != RUNTIME_SPECIFIC_RECORD]
        dropped = [
            f"{r.name} ({r.reason.split(':')[0]})"
            for r in result.records
            if not r.kept and r.name != RUNTIME_SPECIFIC_RECORD
        ]
        speedup = result.baseline.score / portable.score if portable.score else 1.0
        shipped = f"{ONNX.file}: {portable.label} (p50 x{1 / speedup:.2f} of unoptimized)"
        if result.domains.get(portable.label):
            shipped += f", not portable: {', '.join(sorted(result.domains[portable.label]))} ops"
        if runtime_specific is not None:
            shipped += (
                f"; {ORT_OPTIMIZED.file}: {runtime_specific.shipped} "
                f"(p50 x{result.runtime_specific_ratio:.2f} of {ONNX.file})"
            )
        record.detail = f"{shipped}; kept {', '.join(kept) or 'nothing'}" + (
            f"; dropped {'; '.join(dropped)}" if dropped else ""
        )
    return result, runtime_specific


def _runtime_specific_backend(result: OptimizationResult) -> BackendResult | None:
    """The ``model.ort.onnx`` artifact, when the fastest variant needs ONNX Runtime's own ops and beat the
    portable model; its parity is that variant's verification, under this backend's name."""
    variant = result.runtime_specific
    if variant is None:
        return None
    rewrites = variant.label.split("+")[1:]
    domains = ", ".join(sorted(result.domains.get(variant.label, ())))
    portable = (
        "only standard ONNX ops" if not result.domains.get(result.portable.label) else "contrib ops too"
    )
    note = (
        f"{ORT_OPTIMIZED.file} holds ONNX Runtime-specific rewrites ({', '.join(rewrites) or 'none'}) with "
        f"{domains} ops, p50 x{result.runtime_specific_ratio:.2f} of {ONNX.file}, which holds {portable}"
    )
    return BackendResult(
        backend=ORT_OPTIMIZED.name,
        target=str(ONNX.target),
        file=ORT_OPTIMIZED.file,
        parity=[replace(variant.parity, backend=ORT_OPTIMIZED.name)],
        shipped=variant.label,
        path=variant.path,
        notes=[note],
        spec=ORT_OPTIMIZED,
    )


def quantize_stage(
    stages: StageTracker,
    *,
    samples: tuple[SampleSet, SampleSet] | None,
    options: ExportOptions,
    loaded: LoadedModel,
    onnx_backend: BackendResult | None,
    float_onnx: Path | None,
    golden: Sequence[GoldenCase],
    work_dir: Path,
    listener: ProgressListener,
) -> QuantizationResult | None:
    """int8 from the shipped float ONNX model, when asked for and that model verified."""
    if samples is None:
        stages.skip("quantize", "not requested")
        return None
    if onnx_backend is None:
        stages.skip("quantize", "no float ONNX model: the onnx target failed to convert")
        return None
    if not onnx_backend.passed or onnx_backend.path is None:
        stages.skip("quantize", "the float ONNX model failed verification")
        return None
    with stages.run("quantize") as record:
        quantization = _quantize(
            samples=samples,
            options=options,
            loaded=loaded,
            float_onnx=float_onnx or onnx_backend.path,
            golden=golden,
            work_dir=work_dir,
            listener=listener,
        )
        record.status, record.detail = _quantize_status(quantization)
    return quantization


def int8_samples(options: ExportOptions) -> tuple[SampleSet, SampleSet]:
    """Calibration and held-out evaluation samples (a recipe's labelled ``eval_data`` when it has one).

    Raises:
        UsageError: no real calibration data, and ``--require-real-data`` was given or every candidate of
            the mode takes its ranges from calibration (ranges of noise would be those of the noise).
    """
    settings = options.quantization
    if settings.calibration is None:
        _check_synthetic_allowed(settings)
    if settings.eval_data:
        calibration = load_samples(settings.calibration, options.spec, settings.samples, options.seed)
        return calibration, load_samples(settings.eval_data, options.spec, 100_000, options.seed)
    held_out = max(8, settings.samples // 4)
    samples = load_samples(settings.calibration, options.spec, settings.samples + held_out, options.seed)
    return samples.split(held_out / (settings.samples + held_out))


def _check_synthetic_allowed(settings: QuantizeOptions) -> None:
    mode = settings.mode.value
    how = (
        "pass --calibration FILE.npz (real inputs, samples along axis 0), a folder of samples or "
        "package.module:callable, or set [quantize].calibration in the recipe"
    )
    if settings.require_real_data:
        raise UsageError(
            f"--quantize {mode} has no real calibration data and --require-real-data is set: {how}"
        )
    specs = candidates_for(settings.mode)
    if specs and all(Requirement.CALIBRATION_DATA in spec.needs for spec in specs):
        raise UsageError(
            f"--quantize {mode} takes its int8 ranges from calibration data, and ranges drawn from noise "
            f"would be those of the noise: {how} (or use --quantize dynamic / int8, which judge on "
            "synthetic inputs)"
        )


def _quantize(
    *,
    samples: tuple[SampleSet, SampleSet],
    options: ExportOptions,
    loaded: LoadedModel,
    float_onnx: Path,
    golden: Sequence[GoldenCase],
    work_dir: Path,
    listener: ProgressListener,
) -> QuantizationResult:
    """Build, judge and time the int8 candidates."""
    settings = options.quantization
    calibration, evaluation = samples
    result = run_quantization(
        settings,
        module=loaded.module,
        spec=options.spec,
        float_onnx=float_onnx,
        golden=golden,
        calibration=calibration,
        evaluation=evaluation,
        formats=choose_formats(),
        plans=batch_plans(options.spec, options.batch_dim, options.batch_sizes, options.seed),
        timing=decision_timing(options),
        threads=options.threads,
        work_dir=work_dir,
        step=lambda message: listener.step(message, 0, 0),
        targets=options.chosen_targets,
        hf=loaded.hf,
    )
    if not result.candidates:
        reasons = "; ".join(f"{name}: {why}" for name, why in result.skipped.items())
        raise UsageError(f"--quantize {settings.mode.value}: no candidate can be built here ({reasons})")
    if result.none_built:
        reasons = "; ".join(f"{c.name}: {c.error}" for c in result.candidates)
        raise ConversionError(f"--quantize {settings.mode.value}: no lossy model could be built ({reasons})")
    return result


def _quantize_status(result: QuantizationResult) -> tuple[StageStatus, str]:
    """One clause per runtime that shipped (ONNX Runtime's ``model.int8.onnx``, OpenVINO's IR)."""
    status = StageStatus.PASSED if result.passed else StageStatus.FAILED
    if not result.shipped:
        return status, f"{len(result.candidates)} candidates, none shipped"
    parts = []
    for chosen in result.shipped:
        size = chosen.size_bytes / result.float_size if result.float_size else 0
        part = f"shipped {chosen.name}: p50 x{chosen.p50_ratio:.2f} of float {chosen.runtime}, "
        part += f"size x{size:.2f}, "
        if chosen.generation is None:
            part += f"min cosine {min(o.min_cosine for o in chosen.outputs):.4f}"
        else:  # a decoder: per token, judged by generation
            generation = chosen.generation
            part += (
                f"token match {generation.token_match:.2f}, logits cosine {generation.min_logits_cosine:.4f}"
            )
        parts.append(part)
    return status, "; ".join(parts)
