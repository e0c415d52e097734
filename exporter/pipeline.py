"""The export pipeline: load -> convert -> verify -> optimize -> quantize -> benchmark -> write, each stage
timed and recorded (``stages/records.py``: a ``StageRecord`` per stage, passed, failed, skipped or not run).

``export(options)`` is what ``exporter export`` calls; everything the CLI does is reachable from here. This
module only orders the stages and hands each one's result to the next; each lives in its own module:

- load: ``stages/load.py`` (``load_stage`` -> ``Loaded``: the model from ``loading/``, the eager reference,
  golden cases from ``verify/parity.py``)
- convert: ``stages/convert.py`` (``build_backends``, one build per ``BackendSpec`` of ``backends/``)
- verify: ``stages/convert.py`` (``verify_backends``, golden cases from ``verify/parity.py``)
- optimize: ``stages/onnx.py`` (``optimize_stage`` -> ``OptimizationResult``; passes in ``optimize/``)
- quantize: ``stages/onnx.py`` (``quantize_stage`` -> ``QuantizationResult``; candidates in ``quantize/``)
- benchmark: ``stages/benchmark.py`` (``benchmark_stage`` -> ``LatencyStats`` per backend and batch)
- write: ``stages/write.py`` (``write_stage``: artifacts, golden files, manifest.json, report.json/md/html,
  through ``stages/staging.py``'s staging folder, swapped in whole)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from exporter._heap import collect_for, page_out
from exporter.backends.onnxruntime import ONNX, alternative_graph, conversion_of
from exporter.backends.openvino import OPENVINO
from exporter.backends.registry import BackendResult, BackendSpec, BuildContext, backends_for
from exporter.benchmark.decoder import DecoderLatency
from exporter.benchmark.latency import LatencyStats
from exporter.benchmark.trust import TimingQuality
from exporter.convert.onnx import OnnxConversion
from exporter.documents.build import RunRecord, nonfinite_gate_failed
from exporter.environment import bf16_support, collect_environment
from exporter.errors import ExitCode, UsageError
from exporter.hf.generation_check import GenerationResult
from exporter.loading.checkpoint import LoadedModel
from exporter.optimize.optimizer import OptimizationResult
from exporter.options import ExportOptions
from exporter.quantize.calibration import SampleSet
from exporter.quantize.search import QuantizationResult
from exporter.quantize.types import QuantMode
from exporter.runners.pytorch import EagerRunner
from exporter.stages.benchmark import benchmark_stage, drop_slower_lossy, shipped_runners
from exporter.stages.convert import build_backends, verify_backends
from exporter.stages.generation import check_generations
from exporter.stages.load import load_stage
from exporter.stages.memory import weights_bytes
from exporter.stages.onnx import optimize_stage, quantize_stage
from exporter.stages.records import (
    CheckpointListener,
    ProgressListener,
    SilentListener,
    StageRecord,
    StageStatus,
    StageTracker,
    TargetFailure,
)
from exporter.stages.staging import check_output_dir, output_lock, staging_dir
from exporter.stages.stale_runs import record_stage
from exporter.stages.storage import check_free_space, check_writable, estimate_bytes, storage_errors
from exporter.stages.write import write_stage
from exporter.verify.parity import GoldenCase, ParityResult

__all__ = ["ExportOptions", "ExportResult", "ProgressListener", "StageRecord", "StageStatus", "export"]


@dataclass
class ExportResult:
    """What a run produced; ``exit_code`` is what the CLI returns."""

    out_dir: Path
    stages: list[StageRecord]
    loaded: LoadedModel
    backends: list[BackendResult]
    latency: list[LatencyStats]
    report: dict[str, Any]
    quantization: QuantizationResult | None = None
    nonfinite_failed: bool = False
    """``fail_on_nonfinite`` was set and the PyTorch reference produced NaN/Inf on a golden input."""
    failed_targets: list[TargetFailure] = field(default_factory=list)
    """Targets whose conversion failed while the others shipped: a partial export (exit 6)."""
    generation: list[GenerationResult] = field(default_factory=list)
    """A decoder's greedy generation through each shipped float artifact against transformers."""
    decoder_latency: list[DecoderLatency] = field(default_factory=list)

    @property
    def parity(self) -> list[ParityResult]:
        """Every candidate of every backend, in the order verified."""
        return [p for b in self.backends for p in b.parity]

    @property
    def onnx(self) -> BackendResult | None:
        return next((b for b in self.backends if b.spec is ONNX), None)

    @property
    def conversion(self) -> OnnxConversion | None:
        """The ONNX conversion (exporter attempts, simplification), None without an ONNX target."""
        return conversion_of(self.onnx) if self.onnx else None

    @property
    def shipped(self) -> str | None:
        """The ONNX candidate that ships (``simplified`` or ``exported``), None without an ONNX target."""
        return self.onnx.shipped if self.onnx else None

    def backend(self, name: str) -> BackendResult:
        return next(b for b in self.backends if b.backend == name)

    @property
    def passed(self) -> bool:
        floats_passed = bool(self.backends) and all(b.passed for b in self.backends)
        floats_passed = floats_passed and all(g.passed for g in self.generation)
        quantization_passed = self.quantization is None or self.quantization.passed
        return floats_passed and quantization_passed and not self.nonfinite_failed

    @property
    def exit_code(self) -> ExitCode:
        """1 when anything shipped fails its checks; else 6 when a target failed to convert; else 0."""
        if not self.passed:
            return ExitCode.VERIFICATION_FAILED
        return ExitCode.PARTIAL_EXPORT if self.failed_targets else ExitCode.OK


def export(options: ExportOptions, listener: ProgressListener | None = None) -> ExportResult:
    """Run the whole pipeline; the artifacts folder appears only once complete.

    Returns an ``ExportResult`` also when verification fails (its report is written and ``exit_code`` is 1).

    Raises:
        ExporterError: bad input (exit 2) or conversion failure (exit 3); nothing is written then. A full,
            read-only or unwritable disk is a ``StorageError`` (exit 2), also when a writer failed midway.
    """
    specs = backends_for(options.chosen_targets)
    if options.quantization.mode is not QuantMode.NONE and ONNX not in specs:
        raise UsageError(
            f"--quantize {options.quantization.mode.value} starts from the verified float ONNX model: add "
            f"--to {ONNX.target} (or --to all)"
        )
    _check_lossy_mode(options, specs)
    check_output_dir(options.out_dir, options.force, _kept_paths(options))
    check_writable(options.out_dir)
    for spec in specs:
        if spec.requires is not None:
            spec.requires()
    with storage_errors(options.out_dir), output_lock(options.out_dir):
        return _export(options, specs, CheckpointListener(listener or SilentListener()))


def _check_lossy_mode(options: ExportOptions, specs: Sequence[BackendSpec]) -> None:
    """``--quantize bf16`` runs the float IR in OpenVINO with bf16 precision: it needs that target, and a
    CPU with native bf16 (emulated bf16 is slower than float32 and less exact)."""
    if options.quantization.mode is not QuantMode.BF16:
        return
    if OPENVINO not in specs:
        raise UsageError(
            "--quantize bf16 runs the model in OpenVINO with bf16 inference precision: add --to openvino"
        )
    native, why = bf16_support()
    if not native:
        raise UsageError(
            f"--quantize bf16: {why}; use --quantize int8, or run on a CPU with AMX or AVX512-BF16"
        )


def _kept_paths(options: ExportOptions) -> tuple[Path, ...]:
    """Files the run reads, which replacing ``--out`` must never delete."""
    calibration = options.quantization.calibration
    paths = [options.checkpoint]
    if calibration and ":" not in calibration:
        paths.append(Path(calibration))
    return tuple(paths)


@dataclass
class _Run:
    """One export's state as it moves through the stages (each stage function fills its part)."""

    options: ExportOptions
    specs: Sequence[BackendSpec]
    listener: ProgressListener
    stages: StageTracker
    loaded: LoadedModel | None = None
    eager: EagerRunner | None = None
    golden: list[GoldenCase] = field(default_factory=list)
    samples: tuple[SampleSet, SampleSet] | None = None
    results: list[BackendResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nonfinite_failed: bool = False
    failed_targets: list[TargetFailure] = field(default_factory=list)
    optimization: OptimizationResult | None = None
    quantization: QuantizationResult | None = None
    latency: list[LatencyStats] = field(default_factory=list)
    load_seconds: dict[str, float] = field(default_factory=dict)
    timing_quality: TimingQuality | None = None
    generation: list[GenerationResult] = field(default_factory=list)
    decoder_latency: list[DecoderLatency] = field(default_factory=list)

    def step(self, message: str) -> None:
        self.listener.step(message, 0, 0)

    def note(self, message: str) -> None:
        """Shown now and kept in the report's notes."""
        self.notes.append(message)
        self.listener.note(message)


def _export(options: ExportOptions, specs: Sequence[BackendSpec], listener: ProgressListener) -> ExportResult:
    run = _Run(options, specs, listener, StageTracker(listener))
    torch.set_num_threads(options.threads)
    environment = collect_environment(options.threads)
    loaded = _load(run)
    run.stages.on_start.append(lambda stage: page_out(loaded.module))  # idle until needed: see page_out
    collect_for(weights_bytes(loaded.module))
    check_free_space(options.out_dir, _needed_bytes(run, loaded))
    # storage_errors inside the staging folder's context: a full disk is reported while the folder fills it.
    with (
        staging_dir(options.out_dir, options.force, _kept_paths(options), on_stale=run.note) as staging,
        storage_errors(options.out_dir),
    ):
        run.stages.on_start.append(partial(record_stage, staging))
        build_dir = staging / "_build"
        _convert_and_verify(run, loaded, build_dir)
        _optimize_and_quantize(run, loaded, build_dir)
        _benchmark(run)
        with run.stages.run("write") as record:
            for result in run.results:
                if result.built is not None and result.built.refresh is not None:
                    result.conversion = result.built.refresh()
            record_of_run = RunRecord(
                environment,
                loaded,
                run.golden,
                run.results,
                run.quantization,
                run.latency,
                run.notes,
                run.optimization,
                run.load_seconds,
                run.failed_targets,
                timing_quality=run.timing_quality,
                generation=run.generation,
                decoder_latency=run.decoder_latency,
            )
            report = write_stage(
                staging=staging, build_dir=build_dir, options=options, run=record_of_run, stages=run.stages
            )
            record.detail = str(options.out_dir)
    for result in run.results:
        result.runner = None
    return ExportResult(
        options.out_dir,
        run.stages.list(),
        loaded,
        run.results,
        run.latency,
        report,
        run.quantization,
        run.nonfinite_failed,
        run.failed_targets,
        run.generation,
        run.decoder_latency,
    )


def _needed_bytes(run: _Run, loaded: LoadedModel) -> int:
    """The staging folder's estimated peak size (``exporter.stages.storage.estimate_bytes``)."""
    options = run.options
    return estimate_bytes(
        loaded.module,
        run.golden,
        run.specs,
        options.quantization.mode is not QuantMode.NONE,
        fallback=options.checkpoint.stat().st_size,
    )


def _load(run: _Run) -> LoadedModel:
    with run.stages.run("load") as record:
        loaded = load_stage(run.options)
        record.detail = loaded.model.describe()
    run.eager, run.golden, run.samples = loaded.eager, loaded.golden, loaded.samples
    run.loaded = loaded.model
    return loaded.model


def _convert_and_verify(run: _Run, loaded: LoadedModel, build_dir: Path) -> None:
    options, golden = run.options, run.golden
    with run.stages.run("convert") as record:
        built = build_backends(
            run.specs, options=options, loaded=loaded, golden=golden, build_dir=build_dir, step=run.step
        )
        record.detail = built.describe()
        run.failed_targets = built.failed
        if built.failed:
            record.status = StageStatus.FAILED
    with run.stages.run("verify") as record:
        run.results, run.notes = verify_backends(
            built, golden=golden, options=options, loaded=loaded, step=run.step
        )
        run.nonfinite_failed = nonfinite_gate_failed(options, golden)
        facts = loaded.hf
        if facts is not None and facts.is_decoder:
            run.generation, notes = check_generations(run.results, facts, options, run.step)
            run.notes += notes
        record.status, record.detail = _verify_status(
            run.results, len(golden), run.nonfinite_failed, run.generation
        )


def _optimize_and_quantize(run: _Run, loaded: LoadedModel, build_dir: Path) -> None:
    """The ONNX model's own stages: graph optimization, then int8 from the optimized float model."""
    options, golden = run.options, run.golden
    onnx = next((r for r in run.results if r.spec is ONNX), None)
    context = BuildContext(loaded, options, golden, build_dir / ONNX.name, run.step)
    run.optimization, runtime_specific = optimize_stage(
        run.stages,
        options=options,
        module=loaded.module,
        onnx_backend=onnx,
        alternative=alternative_graph(onnx, context) if onnx is not None else None,
        golden=golden,
        work_dir=build_dir / "optimized",
        listener=run.listener,
    )
    if onnx is not None and runtime_specific is not None:  # listed, timed and written as its own artifact
        run.results.insert(run.results.index(onnx) + 1, runtime_specific)
    run.quantization = quantize_stage(
        run.stages,
        samples=run.samples,
        options=options,
        loaded=loaded,
        onnx_backend=onnx,
        float_onnx=run.optimization.best.quantizable if run.optimization else None,
        golden=golden,
        work_dir=build_dir / "int8",
        listener=run.listener,
    )


def _benchmark(run: _Run) -> None:
    if not run.options.benchmark:
        run.stages.skip("benchmark", "disabled")
        return
    assert run.eager is not None and run.loaded is not None
    with run.stages.run("benchmark") as record:
        timed = benchmark_stage(
            run.eager,
            shipped_runners(run.results, run.quantization, run.options),
            run.options,
            run.listener,
            run.load_seconds,
            layout=facts.layout if (facts := run.loaded.hf) is not None else None,
        )
        run.latency = drop_slower_lossy(timed.latency, run.quantization, run.notes, timed.decoder)
        kept = {s.backend for s in run.latency}
        run.decoder_latency = [row for row in timed.decoder if row.backend in kept]
        run.timing_quality = timed.quality.restricted_to(s.backend for s in run.latency)
        record.detail = f"{len(run.latency)} timings, {run.options.threads} threads"
        record.detail += f", {len(run.decoder_latency)} decoder timings" if run.decoder_latency else ""
        record.detail += run.timing_quality.describe()


def _verify_status(
    results: Sequence[BackendResult],
    cases: int,
    nonfinite_failed: bool,
    generation: Sequence[GenerationResult] = (),
) -> tuple[StageStatus, str]:
    failing = [r for r in results if not r.passed]
    plural = "s" if len(results) != 1 else ""
    detail = f"{len(results)} backend{plural} x {cases} shapes" + "".join(
        f"; {r.backend}: {(r.notes or r.shipped_parity.failures())[0]}" for r in failing
    )
    if generation:
        prompts = max(len(g.prompts) for g in generation)
        detail += f"; greedy generation: {len(generation)} artifacts x {prompts} prompts"
        detail += "".join(f"; {g.describe()}" for g in generation if not g.passed)
    if nonfinite_failed:
        detail += "; the PyTorch reference itself outputs NaN/Inf (--fail-on-nonfinite)"
    failed = failing or nonfinite_failed or not all(g.passed for g in generation)
    return (StageStatus.FAILED if failed else StageStatus.PASSED), detail
