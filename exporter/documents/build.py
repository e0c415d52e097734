"""The documents a run leaves behind: ``report.json`` (everything measured, with notes a reader needs)
and ``manifest.json`` (what the artifacts are, with hashes and versions). Both carry ``schema_version``."""

from __future__ import annotations

import datetime
import resource
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.backends._verify import BackendResult
from exporter.backends.onnxruntime import INT8, ONNX, manifest_section
from exporter.backends.registry import BackendSpec
from exporter.benchmark.decoder import DecoderLatency
from exporter.benchmark.latency import LatencyStats
from exporter.documents.decoder import decoder_manifest, decoder_report
from exporter.hf.generation_check import GenerationResult
from exporter.loading.checkpoint import LoadedModel
from exporter.optimize.optimizer import OptimizationResult
from exporter.quantize.search import QuantizationResult
from exporter.quantize.types import Candidate
from exporter.report.markdown import REPORT_SCHEMA_VERSION
from exporter.specs.inputs import InputSpec
from exporter.stages.records import StageRecord
from exporter.stages.staging import MANIFEST_SCHEMA_VERSION, file_inventory, jsonable
from exporter.verify.parity import GoldenCase, nonfinite_summary

if TYPE_CHECKING:
    from exporter.benchmark.trust import TimingQuality
    from exporter.documents.manifest import ArtifactEntry, Int8Entry
    from exporter.options import ExportOptions
    from exporter.stages.records import TargetFailure

__all__ = [
    "RENDERED",
    "RunRecord",
    "build_manifest",
    "build_report",
    "lossy_artifacts",
    "nonfinite_gate_failed",
]

# Not hashed: the manifest cannot hold its own hash. The rendered reports are hashed like every other file
# (``exporter report`` re-renders them and updates their entries).
RENDERED = ("manifest.json",)


@dataclass
class RunRecord:
    """Everything the stages produced, for the report and the manifest."""

    environment: dict[str, Any]
    loaded: LoadedModel
    golden: Sequence[GoldenCase]
    backends: list[BackendResult]
    quantization: QuantizationResult | None
    latency: list[LatencyStats]
    notes: list[str] = field(default_factory=list)
    optimization: OptimizationResult | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    failed_targets: list[TargetFailure] = field(default_factory=list)
    """Requested targets whose conversion failed while others shipped (a partial export)."""
    timing_quality: TimingQuality | None = None
    """How far to trust the latency figures (machine load, spread, thread probe); None: not benchmarked."""
    generation: list[GenerationResult] = field(default_factory=list)
    """A decoder's greedy generation through each shipped float artifact (``stages/generation.py``)."""
    decoder_latency: list[DecoderLatency] = field(default_factory=list)

    @property
    def onnx(self) -> BackendResult | None:
        return next((b for b in self.backends if b.spec is ONNX), None)

    @property
    def nonfinite(self) -> list[dict[str, Any]]:
        """Every reference output holding NaN/Inf, per shape case (empty when all outputs are finite)."""
        return [
            {
                "case": item.case.name,
                "output": name,
                "nan": counts.nan,
                "inf": counts.inf,
                "posinf": counts.posinf,
                "neginf": counts.neginf,
                "elements": counts.elements,
            }
            for item in self.golden
            for name, counts in item.nonfinite.items()
        ]


def nonfinite_gate_failed(options: ExportOptions, golden: Sequence[GoldenCase]) -> bool:
    """``fail_on_nonfinite`` is set and the PyTorch reference produced NaN/Inf on a golden input."""
    return options.fail_on_nonfinite and any(item.nonfinite for item in golden)


def _nonfinite_note(options: ExportOptions, golden: Sequence[GoldenCase]) -> list[str]:
    """Parity counts NaN/Inf as a match where the reference has them too, so say loudly that it does."""
    where = nonfinite_summary(golden)
    if where is None:
        return []
    verdict = (
        "--fail-on-nonfinite is set, so the export fails"
        if options.fail_on_nonfinite
        else "pass --fail-on-nonfinite to fail the export"
    )
    return [
        f"the PyTorch model's own outputs contain NaN/Inf on the golden inputs ({where}); parity with "
        f"NaN/Inf is only agreement on where they are; {verdict}"
    ]


def _backend_notes(backend: BackendResult, spec: InputSpec) -> list[str]:
    """Why a backend did not ship its best candidate, and anything its conversion recorded."""
    notes = [f"{backend.backend}: {note}" for note in backend.notes]
    return notes + (backend.spec.notes(backend, spec) if backend.spec is not None else [])


def build_report(options: ExportOptions, run: RunRecord, stages: list[StageRecord]) -> dict[str, Any]:
    environment, loaded, latency, quantization = run.environment, run.loaded, run.latency, run.quantization
    notes = [*_nonfinite_note(options, run.golden), *loaded.notes]
    onnx_backend = run.onnx
    for backend in run.backends:
        notes.extend(_backend_notes(backend, options.spec))
    notes.extend(run.notes)
    if quantization is not None:
        notes.extend(quantization.notes)
    passed = all(b.passed for b in run.backends) and (quantization is None or quantization.passed)
    passed = passed and not nonfinite_gate_failed(options, run.golden)
    passed = passed and all(g.passed for g in run.generation)
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "name": options.model_name,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "status": "failed" if not passed else "partial" if run.failed_targets else "passed",
        "stages": [s.to_json() for s in stages],
        "environment": environment,
        "source": loaded.to_json(),
        "input_spec": options.spec.to_json(),
        "seed": options.seed,
        "settings": _settings_json(options),
        "conversion": onnx_backend.conversion if onnx_backend else None,
        "backends": [b.to_json() for b in run.backends],
        "parity": [p.to_json() for b in run.backends for p in b.parity],
        "latency": [s.to_json() for s in latency],
        "timing": vars(options.timing),
        "timing_quality": run.timing_quality.to_json() if run.timing_quality else None,
        "quantization": quantization.to_json() if quantization else None,
        "optimization": [r.to_json() for r in run.optimization.records] if run.optimization else None,
        "resources": _resources(run, stages),
        "optimization_summary": run.optimization.to_json() if run.optimization else None,
        "nonfinite": run.nonfinite,
        "failed_targets": [f.to_json() for f in run.failed_targets] or None,
        **decoder_report(loaded, run.generation, run.decoder_latency),
        "notes": notes,
        "artifacts": {
            **{b.backend: b.file for b in run.backends if b.file},
            **{spec.name: spec.file for spec, _ in lossy_artifacts(quantization)},
            "golden": "golden/",
            "manifest": "manifest.json",
            "report": "report.json, report.md, report.html",
        },
    }
    from exporter.documents.report_model import Report  # imported here: see the note above _int8_manifest

    Report.model_validate(jsonable(report))  # one this exporter cannot read back is a bug here (exit 5)
    return report


def _resources(run: RunRecord, stages: list[StageRecord]) -> dict[str, Any]:
    """Peak resident memory of this process so far (the highest stage peak: the stages reset the kernel's
    mark, so ``ru_maxrss`` follows them), the load stage's estimate, and each shipped artifact's load time."""
    peaks = [s.peak_rss_mb for s in stages if s.peak_rss_mb is not None]
    peak_mb = max([*peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])  # kB on Linux
    load = {name: round(seconds, 4) for name, seconds in run.load_seconds.items()}
    for backend in run.backends:  # without timing: the load time measured while verifying
        seconds = backend.load_seconds.get(backend.shipped)
        if backend.backend not in load and seconds is not None:
            load[backend.backend] = round(seconds, 4)
    estimate = run.loaded.estimated_peak_bytes
    return {
        "peak_rss_mb": round(peak_mb, 1),
        "estimated_peak_mb": round(estimate / 2**20, 1) if estimate else None,
        "load_seconds": load,
    }


def _settings_json(options: ExportOptions) -> dict[str, Any]:
    """The options as run, so a report says exactly what was asked for."""
    return {
        "checkpoint": str(options.checkpoint),
        "targets": list(options.targets),
        "model": options.model_ref,
        "model_kwargs": dict(options.model_kwargs),
        "trust_checkpoint": options.trust_checkpoint,
        "state_dict_key": options.state_dict_key,
        "output_names": list(options.output_names) or None,
        "atol": options.atol,
        "rtol": options.rtol,
        "seed": options.seed,
        "opset_requested": options.opset,
        "onnx_exporter": options.onnx_exporter.value,
        "torchscript_mode": options.torchscript_mode,
        "compile_mode": options.compile_mode,
        "optimization": asdict(options.optimization),
        "simplify": options.simplify,
        "threads": options.threads,
        "benchmark": options.benchmark,
        "fail_on_nonfinite": options.fail_on_nonfinite,
        "batch_dim": options.batch_dim,
        "batch_sizes": list(options.batch_sizes),
        "quantization": asdict(options.quantization),
    }


# The manifest models are imported where used: ``python -m exporter.documents.manifest --schema`` imports the
# ``exporter`` package (and through it this module) first, and must not find that module imported.


def lossy_artifacts(quantization: QuantizationResult | None) -> list[tuple[BackendSpec, Candidate]]:
    """The lossy models that ship, with the registered lossy backend of each one's runtime, which names
    the file it ships as (the ONNX Runtime choice as ``model.int8.onnx``, say)."""
    if quantization is None:
        return []
    shipped = [(c.backend, c) for c in quantization.shipped if c.path is not None]
    return [(spec, c) for spec, c in shipped if spec is not None and spec.file is not None]


def _int8_manifest(quantization: QuantizationResult | None) -> Int8Entry | None:
    chosen = quantization.chosen if quantization else None
    if quantization is None or chosen is None or INT8.file is None:
        return None
    return _lossy_entry(quantization, INT8, chosen)


def _lossy_manifest(quantization: QuantizationResult | None) -> list[Int8Entry] | None:
    entries = [
        _lossy_entry(quantization, spec, chosen)
        for spec, chosen in lossy_artifacts(quantization)
        if spec is not INT8
    ]
    return entries or None


def _lossy_entry(quantization: QuantizationResult | None, spec: BackendSpec, chosen: Candidate) -> Int8Entry:
    from exporter.documents.manifest import Int8Entry

    assert quantization is not None and spec.file is not None
    return Int8Entry(
        backend=None if spec is INT8 else spec.name,
        config=dict(chosen.config) or None,
        file=spec.file,
        candidate=chosen.name,
        engine=chosen.engine,
        settings=jsonable(dict(chosen.settings)),  # as write_json wrote it: numpy scalars as numbers
        float_layers=[e.node for e in chosen.float_layers],
        budget=quantization.options.budget,
        formats=asdict(quantization.formats),
        calibration=quantization.calibration.source,
        judged_on="synthetic" if quantization.synthetic_only else "real",
        token_match_floor=quantization.options.token_match_floor if chosen.decoder else None,
        bits=_weight_bits(chosen.settings),
        block_size=block if isinstance(block := chosen.settings.get("block_size"), int) else None,
    )


def _weight_bits(settings: dict[str, Any]) -> int | None:
    """Bits per weight as the candidate's builder recorded them: MatMulNBits' ``bits``, NNCF's ``mode``
    (``int4_asym``), ONNX Runtime's dynamic ``weight_type`` (``int8``/``uint8``); None otherwise (bf16)."""
    if isinstance(bits := settings.get("bits"), int):
        return bits
    text = str(settings.get("mode") or settings.get("weight_type") or "")
    return next((b for b in (4, 8) if text.startswith((f"int{b}", f"uint{b}"))), None)


def _artifact_entry(backend: BackendResult, file: str) -> ArtifactEntry:
    from exporter.documents.manifest import ArtifactEntry, CallEntry

    call = backend.conversion.get("call")
    return ArtifactEntry(
        backend=backend.backend,
        file=file,
        candidate=backend.shipped,
        verified=backend.passed,
        loader=backend.spec.loader if backend.spec else None,
        call=None if call is None else CallEntry.model_validate(call, strict=False),
        config=backend.conversion.get("config"),
    )


def build_manifest(
    options: ExportOptions, run: RunRecord, golden_index: list[dict[str, Any]], staging: Path
) -> dict[str, Any]:
    """manifest.json's content, built as a ``Manifest`` so that what is written is what is read back."""
    from pydantic import TypeAdapter

    from exporter.documents.manifest import (
        BenchmarkEntry,
        FileEntry,
        GoldenEntry,
        InputSpecEntry,
        MachineEntry,
        Manifest,
        NonfiniteEntry,
        OnnxEntry,
        SourceEntry,
        ToolEntry,
    )

    environment, loaded = run.environment, run.loaded
    onnx = manifest_section(run.backends)
    hf, generation, decoder_latency = decoder_manifest(loaded, run.generation, run.decoder_latency)
    manifest = Manifest(
        schema_version=MANIFEST_SCHEMA_VERSION,
        name=options.model_name,
        created_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        tool=ToolEntry(name="exporter", version=environment["exporter"]),
        versions=environment["packages"] | {"python": environment["python"]},
        machine=MachineEntry.model_validate(
            {k: environment[k] for k in ("platform", "cpu", "cpu_flags", "logical_cpus")}, strict=False
        ),
        threads=options.threads,
        source=SourceEntry(
            checkpoint=str(loaded.checkpoint),
            format=loaded.format.value,
            sha256=loaded.sha256,
            bytes=loaded.file_size,
            model=options.model_ref,
            model_kwargs=jsonable(dict(options.model_kwargs)),
            state_dict_key=loaded.state_dict_key,
        ),
        onnx=None if onnx is None else OnnxEntry.model_validate(onnx, strict=False),
        artifacts=[_artifact_entry(b, b.file) for b in run.backends if b.file],
        output_names=list(run.golden[0].output_names),
        input_spec=InputSpecEntry.model_validate(options.spec.to_json(), strict=False),
        tolerance=options.tolerance,
        benchmark=BenchmarkEntry(batch_dim=options.batch_dim, batch_sizes=list(options.batch_sizes)),
        int8=_int8_manifest(run.quantization),
        lossy=_lossy_manifest(run.quantization),
        seed=options.seed,
        golden=TypeAdapter(list[GoldenEntry]).validate_python(golden_index, strict=False),
        reference_nonfinite=[NonfiniteEntry.model_validate(n, strict=False) for n in run.nonfinite],
        files={
            name: FileEntry.model_validate(entry, strict=False)
            for name, entry in file_inventory(staging, exclude=RENDERED).items()
        },
        hf=hf,
        generation=generation,
        decoder_latency=decoder_latency,
    )
    return manifest.model_dump(mode="json")
