"""The export pipeline: load -> convert -> verify -> benchmark -> write, each stage timed and recorded.

``export(options)`` is what ``exporter export`` calls; everything the CLI does is reachable from here.
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.artifacts import (
    check_output_dir,
    staging_dir,
    write_golden,
    write_json,
    write_sample_golden,
)
from exporter.benchmark import LatencyStats, TimingConfig, batch_plans, measure_latency
from exporter.convert.onnx import (
    OnnxConversion,
    OnnxConversionRequest,
    OnnxExporterChoice,
    convert_to_onnx,
    move_onnx_model,
)
from exporter.documents import RunRecord, build_manifest, build_report
from exporter.environment import collect_environment
from exporter.errors import ConversionError, ExitCode, UsageError, first_line
from exporter.loading import LoadedModel, LoadRequest, load_model
from exporter.quantize import (
    QuantizationResult,
    QuantizeOptions,
    QuantMode,
    SampleSet,
    choose_formats,
    load_samples,
    run_quantization,
)
from exporter.report import render_markdown
from exporter.runners import EagerRunner, OnnxRuntimeRunner, Runner
from exporter.specs import InputSpec, shape_cases
from exporter.stages import ProgressListener, SilentListener, StageRecord, StageStatus, StageTracker
from exporter.verify import CaseResult, GoldenCase, ParityResult, Tolerance, make_golden, verify_runner

__all__ = ["ExportOptions", "ExportResult", "ProgressListener", "StageRecord", "StageStatus", "export"]


@dataclass(frozen=True)
class ExportOptions:
    """Every setting of one export; CLI flags and recipes both end up here."""

    checkpoint: Path
    spec: InputSpec
    targets: tuple[str, ...] = ("onnx",)
    name: str | None = None
    out: Path | None = None
    force: bool = False
    model_ref: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False
    atol: float = Tolerance.atol
    rtol: float = Tolerance.rtol
    seed: int = 0
    opset: int | None = None
    onnx_exporter: OnnxExporterChoice = OnnxExporterChoice.AUTO
    simplify: bool = True
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) or 1)
    benchmark: bool = True
    batch_dim: str = "batch"
    batch_sizes: tuple[int, ...] = (1, 8)
    timing: TimingConfig = field(default_factory=TimingConfig)
    quantization: QuantizeOptions = field(default_factory=QuantizeOptions)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ExportOptions:
        """Build from a flat mapping (recipe settings overlaid with CLI flags); unknown keys are a bug."""
        known = {f.name for f in fields(cls)}
        unknown = set(settings) - known
        if unknown:
            raise UsageError(f"unknown settings: {', '.join(sorted(unknown))}")
        values = dict(settings)
        for key in ("targets", "batch_sizes"):
            if key in values:
                values[key] = tuple(values[key])
        if "onnx_exporter" in values:
            values["onnx_exporter"] = OnnxExporterChoice(values["onnx_exporter"])
        if "checkpoint" in values:
            values["checkpoint"] = Path(values["checkpoint"])
        if "out" in values and values["out"] is not None:
            values["out"] = Path(values["out"])
        if isinstance(values.get("quantization"), Mapping):
            values["quantization"] = QuantizeOptions(**values["quantization"])
        return cls(**values)

    @property
    def model_name(self) -> str:
        return self.name or self.checkpoint.stem

    @property
    def out_dir(self) -> Path:
        return self.out or Path("artifacts") / self.model_name

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(self.atol, self.rtol)


@dataclass
class ExportResult:
    """What a run produced; ``exit_code`` is what the CLI returns."""

    out_dir: Path
    stages: list[StageRecord]
    loaded: LoadedModel
    conversion: OnnxConversion
    parity: list[ParityResult]
    shipped: str
    latency: list[LatencyStats]
    report: dict[str, Any]
    quantization: QuantizationResult | None = None

    @property
    def passed(self) -> bool:
        float_passed = any(p.passed and p.artifact == self.shipped for p in self.parity)
        return float_passed and (self.quantization is None or self.quantization.passed)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.passed else ExitCode.VERIFICATION_FAILED


def export(options: ExportOptions, listener: ProgressListener | None = None) -> ExportResult:
    """Run the whole pipeline; the artifacts folder appears only once complete.

    Returns an ``ExportResult`` also when verification fails (its report is written and ``exit_code`` is 1).

    Raises:
        ExporterError: bad input (exit 2) or conversion failure (exit 3); nothing is written then.
    """
    if tuple(options.targets) != ("onnx",):
        raise UsageError(f"--to {','.join(options.targets)}: only 'onnx' is available in this version")
    check_output_dir(options.out_dir, options.force)
    listener = listener or SilentListener()
    stages = StageTracker(listener)
    torch.set_num_threads(options.threads)
    environment = collect_environment(options.threads)

    with stages.run("load") as record:
        loaded = load_model(
            LoadRequest(options.checkpoint, options.model_ref, options.model_kwargs, options.trust_checkpoint)
        )
        record.detail = f"{loaded.format.value}, {loaded.parameter_count:,} parameters"
        eager = EagerRunner(loaded.module, options.spec.names)
        cases = shape_cases(options.spec)
        golden = make_golden(eager, options.spec, cases, options.seed)
        # Bad calibration data is bad input: find it before minutes of conversion, not after.
        samples = _int8_samples(options) if options.quantization.mode is not QuantMode.NONE else None

    with staging_dir(options.out_dir, options.force) as staging:
        build_dir = staging / "_build"
        with stages.run("convert") as record:
            conversion = convert_to_onnx(
                _conversion_request(options, loaded, golden, build_dir),
                progress=lambda message: listener.step(message, 0, 0),
            )
            fallback = " after fallback" if len(conversion.attempts) > 1 else ""
            record.detail = f"{conversion.exporter} exporter{fallback}, opset {conversion.opset}"

        with stages.run("verify") as record:
            parity, shipped_path, shipped = _verify_candidates(conversion, golden, options, listener)
            record.status = StageStatus.PASSED if parity[-1].passed else StageStatus.FAILED
            record.detail = f"{shipped} model, {len(golden)} shapes" + (
                "" if parity[-1].passed else f": {parity[-1].failures()[0]}"
            )

        quantization: QuantizationResult | None = None
        if samples is None:
            stages.skip("quantize", "not requested")
        elif not parity[-1].passed:
            stages.skip("quantize", "the float model failed verification")
        else:
            with stages.run("quantize") as record:
                quantization = _quantize(
                    samples=samples,
                    options=options,
                    loaded=loaded,
                    float_onnx=shipped_path,
                    golden=golden,
                    work_dir=build_dir / "int8",
                    listener=listener,
                )
                record.status, record.detail = _quantize_status(quantization)

        latency: list[LatencyStats] = []
        timed = [("onnxruntime", shipped_path)]
        chosen = quantization.chosen if quantization else None
        if chosen is not None and chosen.path is not None:
            timed.append(("onnxruntime-int8", chosen.path))
        if options.benchmark:
            with stages.run("benchmark") as record:
                latency = _benchmark(eager, timed, options, listener)
                record.detail = f"{len(latency)} timings, {options.threads} threads"
        else:
            stages.skip("benchmark", "disabled")

        with stages.run("write") as record:
            run = RunRecord(environment, loaded, golden, conversion, parity, shipped, quantization, latency)
            report = _write(
                staging=staging,
                build_dir=build_dir,
                shipped_path=shipped_path,
                options=options,
                run=run,
                stages=stages,
            )
            record.detail = str(options.out_dir)
    return ExportResult(
        options.out_dir, stages.list(), loaded, conversion, parity, shipped, latency, report, quantization
    )


def _write(
    *,
    staging: Path,
    build_dir: Path,
    shipped_path: Path,
    options: ExportOptions,
    run: RunRecord,
    stages: StageTracker,
) -> dict[str, Any]:
    """Fill the staging folder: models, golden files, report.json/.md and manifest.json (hashing the rest)."""
    move_onnx_model(shipped_path, staging / "model.onnx")
    chosen = run.quantization.chosen if run.quantization else None
    if chosen is not None and chosen.path is not None:
        move_onnx_model(chosen.path, staging / "model.int8.onnx")
    golden_index = write_golden(staging / "golden", run.golden)
    if run.quantization is not None:
        golden_index.append(write_sample_golden(staging / "golden", "int8-eval", run.quantization.evaluation))
    _cleanup_build(build_dir)
    stages.records["write"].status = StageStatus.PASSED
    report = build_report(options, run, stages.list())
    write_json(staging / "report.json", report)
    (staging / "report.md").write_text(render_markdown(report))
    write_json(staging / "manifest.json", build_manifest(options, run, golden_index, staging))
    return report


def _int8_samples(options: ExportOptions) -> tuple[SampleSet, SampleSet]:
    """Calibration and held-out evaluation samples (a recipe's labelled ``eval_data`` when it has one)."""
    settings = options.quantization
    if settings.eval_data:
        calibration = load_samples(settings.calibration, options.spec, settings.samples, options.seed)
        return calibration, load_samples(settings.eval_data, options.spec, 100_000, options.seed)
    held_out = max(8, settings.samples // 4)
    samples = load_samples(settings.calibration, options.spec, settings.samples + held_out, options.seed)
    return samples.split(held_out / (settings.samples + held_out))


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
        timing=options.timing,
        threads=options.threads,
        work_dir=work_dir,
        step=lambda message: listener.step(message, 0, 0),
    )
    if result.none_built:
        reasons = "; ".join(f"{c.name}: {c.error}" for c in result.candidates)
        raise ConversionError(f"--quantize {settings.mode.value}: no int8 model could be built ({reasons})")
    return result


def _quantize_status(result: QuantizationResult) -> tuple[StageStatus, str]:
    status = StageStatus.PASSED if result.passed else StageStatus.FAILED
    chosen = result.chosen
    if chosen is None:
        return status, f"{len(result.candidates)} candidates, none shipped"
    size = chosen.size_bytes / result.float_size if result.float_size else 0
    return status, (
        f"shipped {chosen.name}: p50 x{chosen.p50_ratio:.2f} of float, size x{size:.2f}, "
        f"min cosine {min(o.min_cosine for o in chosen.outputs):.4f}"
    )


def _conversion_request(
    options: ExportOptions, loaded: LoadedModel, golden: Sequence[GoldenCase], work_dir: Path
) -> OnnxConversionRequest:
    def tensors(inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in inputs.items()}

    export_case = golden[0]
    probe = next((g for g in golden[1:] if g.case.name == "large"), golden[-1] if len(golden) > 1 else None)
    return OnnxConversionRequest(
        module=loaded.module,
        spec=options.spec,
        example_inputs=tensors(export_case.inputs),
        probe_inputs=tensors(probe.inputs) if probe else None,
        output_names=export_case.output_names,
        work_dir=work_dir,
        opset=options.opset,
        exporter=options.onnx_exporter,
        simplify=options.simplify,
        exported_program=loaded.exported_program,
    )


def _verify_candidates(
    conversion: OnnxConversion,
    golden: Sequence[GoldenCase],
    options: ExportOptions,
    listener: ProgressListener,
) -> tuple[list[ParityResult], Path, str]:
    """Verify candidates best first (simplified, then as exported) and ship the first that passes."""
    results: list[ParityResult] = []
    candidates = conversion.candidates()
    for index, (label, path) in enumerate(candidates):
        listener.step(f"verifying the {label} ONNX model", index, len(candidates))
        try:
            runner: Runner = OnnxRuntimeRunner(path, options.threads)
        except Exception as error:
            failure = CaseResult("load", {}, {}, error=f"ONNX Runtime cannot load it: {first_line(error)}")
            results.append(ParityResult("onnxruntime", label, "pytorch-eager", options.tolerance, [failure]))
            continue
        result = verify_runner(runner, golden, options.tolerance, label)
        del runner
        gc.collect()
        results.append(result)
        if result.passed:
            return results, path, label
    return results, conversion.model_path, "exported"


def _benchmark(
    eager: EagerRunner, models: Sequence[tuple[str, Path]], options: ExportOptions, listener: ProgressListener
) -> list[LatencyStats]:
    """Time eager and each ONNX model alike at each batch size (or at the export shape without a batch dim).

    One backend at a time: an idle ONNX Runtime session's spinning thread pool slowed eager PyTorch by
    100x on a 2-core machine, so no session is alive while another backend is timed.
    """
    plans = batch_plans(options.spec, options.batch_dim, options.batch_sizes, options.seed)
    factories: list[Callable[[], Runner]] = [lambda: eager]
    factories += [partial(OnnxRuntimeRunner, path, options.threads, name=name) for name, path in models]
    results: list[LatencyStats] = []
    total = len(plans) * len(factories)
    for factory in factories:
        runner = factory()
        for plan in plans:
            listener.step(f"timing {runner.name} at {plan.label}", len(results), total)
            results.append(
                measure_latency(
                    runner,
                    plan.inputs,
                    config=options.timing,
                    threads=options.threads,
                    label=plan.label,
                    batch=plan.batch,
                )
            )
        del runner
        gc.collect()
    baseline = {s.label: s.p50_ms for s in results if s.backend == eager.name}
    for stats in results:
        stats.speedup_vs_eager = baseline[stats.label] / stats.p50_ms if stats.p50_ms > 0 else None
    listener.step("timing done", total, total)
    return results


def _cleanup_build(build_dir: Path) -> None:
    shutil.rmtree(build_dir, ignore_errors=True)
