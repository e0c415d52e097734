"""The export pipeline: load -> convert -> verify -> benchmark -> write, each stage timed and recorded.

``export(options)`` is what ``exporter export`` calls; everything the CLI does is reachable from here.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.artifacts import (
    check_output_dir,
    output_lock,
    staging_dir,
    write_golden,
    write_json,
    write_sample_golden,
)
from exporter.backends import ArtifactCandidate, BackendResult, arbitrate_float_backends, verify_backend
from exporter.benchmark import LatencyStats, TimingConfig, batch_plans, measure_latency
from exporter.convert.compile import (
    AotPackage,
    CompiledModel,
    CompileRequest,
    compile_model,
    cpp_compiler,
    package_aot_inductor,
)
from exporter.convert.onnx import (
    OnnxConversion,
    OnnxConversionRequest,
    OnnxExporterChoice,
    convert_to_onnx,
    move_onnx_model,
)
from exporter.convert.torchscript import (
    TorchScriptConversion,
    TorchScriptMode,
    TorchScriptRequest,
    convert_to_torchscript,
    trace_failure_message,
)
from exporter.documents import RunRecord, build_manifest, build_report, nonfinite_gate_failed
from exporter.environment import collect_environment
from exporter.errors import ConversionError, ExitCode, UsageError
from exporter.loading import LoadedModel, LoadRequest, load_model
from exporter.optimize import (
    DECISION_TIMING,
    OptimizationResult,
    OptimizeOptions,
    OptimizeRequest,
    infer_attention_shape,
    optimize_onnx,
)
from exporter.quantize import (
    QuantizationResult,
    QuantizeOptions,
    QuantMode,
    SampleSet,
    choose_formats,
    load_samples,
    run_quantization,
)
from exporter.recipe import is_safe_name
from exporter.report import render_reports
from exporter.runners import (
    AotInductorRunner,
    CallConvention,
    EagerRunner,
    OnnxRuntimeRunner,
    Runner,
    TorchScriptRunner,
)
from exporter.specs import InputSpec, make_inputs, shape_cases, trace_sizes
from exporter.stages import ProgressListener, SilentListener, StageRecord, StageStatus, StageTracker
from exporter.targets import expand_targets
from exporter.verify import GoldenCase, ParityResult, Tolerance, make_golden

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
    torchscript_mode: str = "auto"
    compile_mode: str = "default"
    optimization: OptimizeOptions = field(default_factory=OptimizeOptions)
    fail_on_nonfinite: bool = False

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
        if isinstance(values.get("optimization"), Mapping):
            optimization = dict(values["optimization"])
            if "steps" in optimization:
                optimization["steps"] = tuple(optimization["steps"])
            values["optimization"] = OptimizeOptions(**optimization)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.out is None and not is_safe_name(self.model_name):
            raise UsageError(
                f"model name '{self.model_name}' (--name, or the checkpoint's file name) is not a safe "
                "folder name for artifacts/<name>: use ASCII letters, digits, '.', '_' or '-', or pass --out"
            )

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
    conversion: OnnxConversion | None
    backends: list[BackendResult]
    latency: list[LatencyStats]
    report: dict[str, Any]
    quantization: QuantizationResult | None = None
    nonfinite_failed: bool = False
    """``fail_on_nonfinite`` was set and the PyTorch reference produced NaN/Inf on a golden input."""

    @property
    def parity(self) -> list[ParityResult]:
        """Every candidate of every backend, in the order verified."""
        return [p for b in self.backends for p in b.parity]

    @property
    def shipped(self) -> str | None:
        """The ONNX candidate that ships (``simplified`` or ``exported``), None without an ONNX target."""
        return next((b.shipped for b in self.backends if b.target == "onnx"), None)

    def backend(self, name: str) -> BackendResult:
        return next(b for b in self.backends if b.backend == name)

    @property
    def passed(self) -> bool:
        floats_passed = bool(self.backends) and all(b.passed for b in self.backends)
        quantization_passed = self.quantization is None or self.quantization.passed
        return floats_passed and quantization_passed and not self.nonfinite_failed

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.passed else ExitCode.VERIFICATION_FAILED


def export(options: ExportOptions, listener: ProgressListener | None = None) -> ExportResult:
    """Run the whole pipeline; the artifacts folder appears only once complete.

    Returns an ``ExportResult`` also when verification fails (its report is written and ``exit_code`` is 1).

    Raises:
        ExporterError: bad input (exit 2) or conversion failure (exit 3); nothing is written then.
    """
    targets = expand_targets(options.targets)
    if options.quantization.mode is not QuantMode.NONE and "onnx" not in targets:
        raise UsageError(
            f"--quantize {options.quantization.mode.value} builds int8 ONNX models: add --to onnx "
            "(or --to all)"
        )
    check_output_dir(options.out_dir, options.force, _kept_paths(options))
    if "compile" in targets:
        cpp_compiler()
    with output_lock(options.out_dir):
        return _export(options, targets, listener or SilentListener())


def _kept_paths(options: ExportOptions) -> tuple[Path, ...]:
    """Files the run reads, which replacing ``--out`` must never delete."""
    calibration = options.quantization.calibration
    paths = [options.checkpoint]
    if calibration and ":" not in calibration:
        paths.append(Path(calibration))
    return tuple(paths)


def _export(options: ExportOptions, targets: Sequence[str], listener: ProgressListener) -> ExportResult:
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

    with staging_dir(options.out_dir, options.force, _kept_paths(options)) as staging:
        build_dir = staging / "_build"
        with stages.run("convert") as record:
            conversions = _convert(
                targets, options, loaded=loaded, golden=golden, build_dir=build_dir, listener=listener
            )
            record.detail = conversions.describe()

        with stages.run("verify") as record:
            backends, verify_notes = _verify_backends(conversions, golden, options, loaded, listener)
            failing = [b for b in backends if not b.passed]
            nonfinite_failed = nonfinite_gate_failed(options, golden)
            record.status = StageStatus.FAILED if failing or nonfinite_failed else StageStatus.PASSED
            plural = "s" if len(backends) != 1 else ""
            record.detail = f"{len(backends)} backend{plural} x {len(golden)} shapes" + "".join(
                f"; {b.backend}: {(b.notes or b.shipped_parity.failures())[0]}" for b in failing
            )
            if nonfinite_failed:
                record.detail += "; the PyTorch reference itself outputs NaN/Inf (--fail-on-nonfinite)"
        onnx_backend = next((b for b in backends if b.target == "onnx"), None)
        optimization = _optimize_stage(
            stages,
            options=options,
            module=loaded.module,
            onnx_backend=onnx_backend,
            alternative=_alternative_exporter(conversions, options, loaded, golden, build_dir),
            golden=golden,
            work_dir=build_dir / "optimized",
            listener=listener,
        )
        quantization = _quantize_stage(
            stages,
            samples=samples,
            options=options,
            loaded=loaded,
            onnx_backend=onnx_backend,
            float_onnx=optimization.best.quantizable if optimization else None,
            golden=golden,
            work_dir=build_dir / "int8",
            listener=listener,
        )

        latency: list[LatencyStats] = []
        load_seconds: dict[str, float] = {}
        if options.benchmark:
            with stages.run("benchmark") as record:
                latency = _benchmark(
                    eager,
                    _timed_runners(backends, quantization, options, loaded),
                    options,
                    listener,
                    load_seconds,
                )
                record.detail = f"{len(latency)} timings, {options.threads} threads"
        else:
            stages.skip("benchmark", "disabled")

        with stages.run("write") as record:
            conversions.refresh(backends)
            run = RunRecord(
                environment,
                loaded,
                golden,
                conversions.onnx,
                backends,
                quantization,
                latency,
                verify_notes,
                optimization,
                load_seconds,
            )
            report = _write(staging=staging, build_dir=build_dir, options=options, run=run, stages=stages)
            record.detail = str(options.out_dir)
    for backend in backends:
        backend.runner = None
    return ExportResult(
        options.out_dir,
        stages.list(),
        loaded,
        conversions.onnx,
        backends,
        latency,
        report,
        quantization,
        nonfinite_failed,
    )


@dataclass
class Conversions:
    """What the convert stage made, one field per target (None when not requested)."""

    onnx: OnnxConversion | None = None
    torchscript: TorchScriptConversion | None = None
    compiled: CompiledModel | None = None
    aot: AotPackage | None = None

    def refresh(self, backends: Sequence[BackendResult]) -> None:
        """Copy the compile counters into the torch-compile backend (timing may have compiled more)."""
        for backend in backends:
            if backend.backend == "torch-compile" and self.compiled:
                backend.conversion = self.compiled.to_json()

    def describe(self) -> str:
        parts = []
        if self.onnx:
            fallback = " after fallback" if len(self.onnx.attempts) > 1 else ""
            parts.append(f"onnx: {self.onnx.exporter} exporter{fallback}, opset {self.onnx.opset}")
        if self.torchscript:
            fallback = " after fallback" if len(self.torchscript.attempts) > 1 else ""
            parts.append(f"torchscript: {self.torchscript.method}{fallback}")
        if self.compiled:
            parts.append(f"torch.compile: {self.compiled.first_compile_seconds:.1f} s to compile")
        if self.aot:
            parts.append(f"AOTInductor: {self.aot.export_seconds + self.aot.package_seconds:.1f} s")
        return "; ".join(parts)


def _convert(
    targets: Sequence[str],
    options: ExportOptions,
    *,
    loaded: LoadedModel,
    golden: Sequence[GoldenCase],
    build_dir: Path,
    listener: ProgressListener,
) -> Conversions:
    def step(message: str) -> None:
        listener.step(message, 0, 0)

    conversions = Conversions()
    if "onnx" in targets:
        conversions.onnx = convert_to_onnx(
            _conversion_request(options, loaded, golden, build_dir / "onnx"), progress=step
        )
    if "torchscript" in targets:
        request = TorchScriptRequest(
            loaded.module,
            options.spec,
            _tensors(golden[0].inputs),
            build_dir / "torchscript",
            TorchScriptMode(options.torchscript_mode),
        )
        conversions.torchscript = convert_to_torchscript(request, progress=step)
    if "compile" in targets:
        compile_request = CompileRequest(
            loaded.module,
            options.spec,
            _tensors(
                make_inputs(
                    options.spec, {**options.spec.example_sizes, **trace_sizes(options.spec)}, options.seed
                )
            ),
            build_dir / "aotinductor",
            options.compile_mode,
            loaded.exported_program,
        )
        conversions.compiled = compile_model(compile_request, options.threads, progress=step)
        conversions.aot = package_aot_inductor(compile_request, progress=step)
    return conversions


def _verify_backends(
    conversions: Conversions,
    golden: Sequence[GoldenCase],
    options: ExportOptions,
    loaded: LoadedModel,
    listener: ProgressListener,
) -> tuple[list[BackendResult], list[str]]:
    """Every backend through the same verification; then float64 arbitration and the trace diagnosis."""
    names = options.spec.names

    def step(message: str) -> None:
        listener.step(message, 0, 0)

    def verify(
        backend: str, target: str, file: str | None, candidates: list[ArtifactCandidate], **kw: Any
    ) -> BackendResult:
        return verify_backend(
            backend=backend,
            target=target,
            file=file,
            candidates=candidates,
            golden=golden,
            tolerance=options.tolerance,
            step=step,
            **kw,
        )

    backends: list[BackendResult] = []
    if conversions.onnx:
        onnx_candidates = [
            ArtifactCandidate(label, path, partial(OnnxRuntimeRunner, path, options.threads))
            for label, path in conversions.onnx.candidates()
        ]
        result = verify("onnxruntime", "onnx", "model.onnx", onnx_candidates)
        result.conversion = {**conversions.onnx.to_json(), "shipped": result.shipped}
        backends.append(result)
    if conversions.torchscript:
        ts = conversions.torchscript
        ts_candidates = [
            ArtifactCandidate(label, path, partial(TorchScriptRunner, path, names))
            for label, path in ts.candidates()
        ]
        result = verify("torchscript", "torchscript", "model.ts", ts_candidates)
        result.conversion = ts.to_json()
        if ts.method == "trace" and not result.passed:
            failed = [c.case for c in result.shipped_parity.cases if not c.passed]
            result.notes.append(trace_failure_message(failed, ts.tracer_warnings))
        backends.append(result)
    if conversions.compiled:
        compiled = conversions.compiled
        result = verify(
            "torch-compile",
            "compile",
            None,
            [ArtifactCandidate("compiled", None, lambda: compiled.runner)],
            keep_runner=True,
        )
        backends.append(result)
    if conversions.aot:
        aot = conversions.aot
        candidate = ArtifactCandidate(
            "packaged", aot.path, partial(AotInductorRunner, aot.path, aot.convention, names)
        )
        result = verify("aotinductor", "compile", "model.pt2", [candidate])
        result.conversion = aot.to_json()
        backends.append(result)
    note = arbitrate_float_backends(backends, loaded.module, golden, names)
    return backends, [note] if note else []


def _write(
    *,
    staging: Path,
    build_dir: Path,
    options: ExportOptions,
    run: RunRecord,
    stages: StageTracker,
) -> dict[str, Any]:
    """Fill the staging folder: models, golden files, report.json/.md and manifest.json (hashing the rest)."""
    for backend in run.backends:
        if backend.file is None or backend.path is None:
            continue
        if backend.target == "onnx":
            move_onnx_model(backend.path, staging / backend.file)
        else:
            backend.path.replace(staging / backend.file)
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
    render_reports(staging, report)
    write_json(staging / "manifest.json", build_manifest(options, run, golden_index, staging))
    return report


def _optimize_stage(
    stages: StageTracker,
    *,
    options: ExportOptions,
    module: torch.nn.Module,
    onnx_backend: BackendResult | None,
    alternative: Callable[[], Path] | None,
    golden: Sequence[GoldenCase],
    work_dir: Path,
    listener: ProgressListener,
) -> OptimizationResult | None:
    """Graph optimization of the verified float ONNX model; the ONNX backend then ships the fastest result."""
    if onnx_backend is None or onnx_backend.path is None:
        stages.skip("optimize", "no ONNX target")
        return None
    if not onnx_backend.passed:
        stages.skip("optimize", "the float ONNX model failed verification")
        return None
    if "none" in options.optimization.steps:
        stages.skip("optimize", "--optimize none")
        return None
    fast = options.timing.min_seconds < DECISION_TIMING.min_seconds
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
        timing=options.timing if fast else DECISION_TIMING,
    )
    with stages.run("optimize") as record:
        result = optimize_onnx(request, step=lambda message: listener.step(message, 0, 0))
        onnx_backend.parity += result.parity
        onnx_backend.shipped = result.best.label
        onnx_backend.path = result.best.path
        onnx_backend.conversion = {**onnx_backend.conversion, "shipped": result.best.label}
        kept = [r.name for r in result.records if r.kept]
        dropped = [f"{r.name} ({r.reason.split(':')[0]})" for r in result.records if not r.kept]
        speedup = result.baseline.score / result.best.score if result.best.score else 1.0
        record.detail = (
            f"shipped {result.best.label} (p50 x{1 / speedup:.2f} of unoptimized); "
            f"kept {', '.join(kept) or 'nothing'}" + (f"; dropped {'; '.join(dropped)}" if dropped else "")
        )
    return result


def _alternative_exporter(
    conversions: Conversions,
    options: ExportOptions,
    loaded: LoadedModel,
    golden: Sequence[GoldenCase],
    build_dir: Path,
) -> Callable[[], Path] | None:
    """For a dynamo-exported graph: the TorchScript-based exporter's graph, made on demand (transformer
    fusions match its patterns)."""
    onnx_conversion = conversions.onnx
    if onnx_conversion is None or onnx_conversion.exporter != "dynamo" or loaded.exported_program is not None:
        return None
    if options.onnx_exporter is not OnnxExporterChoice.AUTO:
        return None

    def export_alternative() -> Path:
        request = replace(
            _conversion_request(options, loaded, golden, build_dir / "onnx-torchscript"),
            exporter=OnnxExporterChoice.TORCHSCRIPT,
        )
        return convert_to_onnx(replace(request, simplify=False)).model_path  # onnxsim hides fusable patterns

    return export_alternative


def _quantize_stage(
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
    if onnx_backend is None or not onnx_backend.passed or onnx_backend.path is None:
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


def _tensors(inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in inputs.items()}


def _conversion_request(
    options: ExportOptions, loaded: LoadedModel, golden: Sequence[GoldenCase], work_dir: Path
) -> OnnxConversionRequest:
    tensors = _tensors
    export_case = golden[0]
    # torch.export (and a trace) fix sizes 0 and 1: export at sizes >= 2 where the spec allows.
    sizes = {**options.spec.example_sizes, **trace_sizes(options.spec)}
    example = (
        make_inputs(options.spec, sizes, options.seed)
        if sizes != export_case.case.sizes
        else export_case.inputs
    )
    others = [g for g in golden if g.case.sizes != sizes]
    probe = next((g for g in others if g.case.name == "large"), others[-1] if others else None)
    return OnnxConversionRequest(
        module=loaded.module,
        spec=options.spec,
        example_inputs=tensors(example),
        probe_inputs=tensors(probe.inputs) if probe else None,
        output_names=export_case.output_names,
        work_dir=work_dir,
        opset=options.opset,
        exporter=options.onnx_exporter,
        simplify=options.simplify,
        exported_program=loaded.exported_program,
    )


def _timed_runners(
    backends: Sequence[BackendResult],
    quantization: QuantizationResult | None,
    options: ExportOptions,
    loaded: LoadedModel,
) -> list[Callable[[], Runner]]:
    """Factories for the shipped artifact of every backend (and the int8 model), opened one at a time."""
    names = options.spec.names
    factories: list[Callable[[], Runner]] = []
    for backend in backends:
        path = backend.path
        if backend.backend == "onnxruntime" and path is not None:
            factories.append(partial(OnnxRuntimeRunner, path, options.threads, name="onnxruntime"))
            chosen = quantization.chosen if quantization else None
            if chosen is not None and chosen.path is not None:
                factories.append(
                    partial(OnnxRuntimeRunner, chosen.path, options.threads, name="onnxruntime-int8")
                )
        elif backend.backend == "torchscript" and path is not None:
            factories.append(partial(TorchScriptRunner, path, names))
        elif backend.backend == "torch-compile" and backend.runner is not None:
            factories.append(partial(lambda runner: runner, backend.runner))
        elif backend.backend == "aotinductor" and path is not None:
            convention = CallConvention.for_module(loaded.module, names)
            factories.append(partial(AotInductorRunner, path, convention, names))
    return factories


def _benchmark(
    eager: EagerRunner,
    factories: Sequence[Callable[[], Runner]],
    options: ExportOptions,
    listener: ProgressListener,
    load_seconds: dict[str, float],
) -> list[LatencyStats]:
    """Time eager and every backend alike at each batch size (or at the export shape without a batch dim).

    One backend at a time: an idle ONNX Runtime session's spinning thread pool slowed eager PyTorch by
    100x on a 2-core machine, so no session is alive while another backend is timed. Each artifact's load
    time (opening it as a deployment would) goes into ``load_seconds``.
    """
    plans = batch_plans(options.spec, options.batch_dim, options.batch_sizes, options.seed)
    everything: list[Callable[[], Runner]] = [lambda: eager, *factories]
    results: list[LatencyStats] = []
    total = len(plans) * len(everything)
    for factory in everything:
        started = time.perf_counter()
        runner = factory()
        if runner is not eager:
            load_seconds[runner.name] = time.perf_counter() - started
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
