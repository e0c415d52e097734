"""The documents a run leaves behind: ``report.json`` (everything measured, with notes a reader needs)
and ``manifest.json`` (what the artifacts are, with hashes and versions). Both carry ``schema_version``."""

from __future__ import annotations

import datetime
import resource
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.artifacts import MANIFEST_SCHEMA_VERSION, file_inventory
from exporter.backends import BackendResult
from exporter.benchmark import LatencyStats
from exporter.convert.onnx import OnnxConversion
from exporter.loading import LoadedModel
from exporter.optimize import OptimizationResult
from exporter.quantize import QuantizationResult
from exporter.report import REPORT_SCHEMA_VERSION
from exporter.specs import InputSpec
from exporter.stages import StageRecord
from exporter.verify import CaseResult, GoldenCase, ParityResult, nonfinite_summary

if TYPE_CHECKING:
    from exporter.pipeline import ExportOptions

__all__ = ["RENDERED", "RunRecord", "build_manifest", "build_report", "nonfinite_gate_failed"]

# Rendered from report.json (``exporter report`` re-renders them), so not hashed: report.json is.
RENDERED = ("manifest.json", "report.md", "report.html")


@dataclass
class RunRecord:
    """Everything the stages produced, for the report and the manifest."""

    environment: dict[str, Any]
    loaded: LoadedModel
    golden: Sequence[GoldenCase]
    conversion: OnnxConversion | None
    backends: list[BackendResult]
    quantization: QuantizationResult | None
    latency: list[LatencyStats]
    notes: list[str] = field(default_factory=list)
    optimization: OptimizationResult | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def onnx(self) -> BackendResult | None:
        return next((b for b in self.backends if b.target == "onnx"), None)

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


def _onnx_notes(conversion: OnnxConversion, backend: BackendResult, spec: InputSpec) -> list[str]:
    notes = []
    shipped, shipped_parity = backend.shipped.split("+")[0], backend.shipped_parity
    if len(conversion.attempts) > 1:
        failed = conversion.attempts[0]
        notes.append(
            f"the {failed.exporter} exporter failed ({failed.error}); fell back to {conversion.exporter}"
        )
    notes.extend(_frozen_dim_hint(shipped_parity, spec, conversion.exporter))
    if conversion.simplify_error:
        notes.append(f"onnxsim not applied: {conversion.simplify_error}")
    elif shipped == "exported" and shipped_parity.passed and conversion.simplified_path is not None:
        notes.append("the onnxsim-simplified model failed verification; shipped the model as exported")
    return notes


def _backend_notes(backend: BackendResult) -> list[str]:
    """Why a backend did not ship its best candidate, and anything its conversion recorded."""
    notes = [f"{backend.backend}: {note}" for note in backend.notes]
    conversion = backend.conversion
    if backend.backend == "torchscript":
        attempts = conversion.get("attempts", [])
        if len(attempts) > 1:
            notes.append(
                f"torchscript: torch.jit.{attempts[0]['exporter']} failed ({attempts[0]['error']}); "
                f"fell back to torch.jit.{attempts[-1]['exporter']}"
            )
        best = backend.parity[0]
        if backend.shipped != best.artifact and backend.passed:
            why = (best.failures() or ["outside tolerance"])[0]
            notes.append(
                f"torchscript: the {best.artifact} archive failed verification ({why}); "
                f"shipped {backend.shipped}"
            )
        notes.extend(
            f"torchscript: {label} archive not made: {why}" for label, why in conversion["skipped"].items()
        )
    if backend.backend == "torch-compile" and conversion.get("recompiles"):
        notes.append(
            f"torch-compile: recompiled {conversion['recompiles']} times after the first compile "
            f"({conversion['graphs']} graphs, {conversion['compile_seconds_total']:.1f} s compiling): "
            "sizes outside the dynamic graph's guards (e.g. size 1, or a kernel's size range) get their own"
        )
    return notes


def build_report(options: ExportOptions, run: RunRecord, stages: list[StageRecord]) -> dict[str, Any]:
    environment, loaded, latency, quantization = run.environment, run.loaded, run.latency, run.quantization
    notes = [*_nonfinite_note(options, run.golden), *loaded.notes]
    onnx_backend = run.onnx
    if run.conversion is not None and onnx_backend is not None:
        notes.extend(_onnx_notes(run.conversion, onnx_backend, options.spec))
    for backend in run.backends:
        notes.extend(_backend_notes(backend))
    notes.extend(run.notes)
    if quantization is not None:
        notes.extend(quantization.notes)
    passed = all(b.passed for b in run.backends) and (quantization is None or quantization.passed)
    passed = passed and not nonfinite_gate_failed(options, run.golden)
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "name": options.model_name,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "status": "passed" if passed else "failed",
        "stages": [
            {"name": s.name, "status": s.status.value, "seconds": round(s.seconds, 3), "detail": s.detail}
            for s in stages
        ],
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
        "quantization": quantization.to_json() if quantization else None,
        "optimization": [r.to_json() for r in run.optimization.records] if run.optimization else None,
        "resources": _resources(run),
        "optimization_summary": run.optimization.to_json() if run.optimization else None,
        "nonfinite": run.nonfinite,
        "notes": notes,
        "artifacts": {
            **{b.backend: b.file for b in run.backends if b.file},
            **({"onnxruntime-int8": "model.int8.onnx"} if quantization and quantization.chosen else {}),
            "golden": "golden/",
            "manifest": "manifest.json",
            "report": "report.json, report.md, report.html",
        },
    }


def _resources(run: RunRecord) -> dict[str, Any]:
    """Peak resident memory of this process so far (the pipeline) and each shipped artifact's load time."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    load = {name: round(seconds, 4) for name, seconds in run.load_seconds.items()}
    for backend in run.backends:  # without timing: the load time measured while verifying
        seconds = backend.load_seconds.get(backend.shipped)
        if backend.backend not in load and seconds is not None:
            load[backend.backend] = round(seconds, 4)
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "load_seconds": load}


def _settings_json(options: ExportOptions) -> dict[str, Any]:
    """The options as run, so a report says exactly what was asked for."""
    return {
        "checkpoint": str(options.checkpoint),
        "targets": list(options.targets),
        "model": options.model_ref,
        "model_kwargs": dict(options.model_kwargs),
        "trust_checkpoint": options.trust_checkpoint,
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


_LOADERS = {
    "onnxruntime": "onnxruntime.InferenceSession",
    "torchscript": "torch.jit.load",
    "aotinductor": "torch._inductor.aoti_load_package",
}


def _int8_manifest(quantization: QuantizationResult | None) -> dict[str, Any] | None:
    chosen = quantization.chosen if quantization else None
    if quantization is None or chosen is None:
        return None
    return {
        "file": "model.int8.onnx",
        "candidate": chosen.name,
        "engine": chosen.engine,
        "settings": chosen.settings,
        "float_layers": [e.node for e in chosen.float_layers],
        "budget": asdict(quantization.options.budget),
        "formats": asdict(quantization.formats),
        "calibration": quantization.calibration.source,
    }


def _frozen_dim_hint(parity: ParityResult, spec: InputSpec, exporter: str) -> list[str]:
    """Name the dims whose other sizes fail while the export shape passes: the signature of a frozen dim."""
    export_case = next((c for c in parity.cases if c.case == "export"), None)
    if export_case is None or not export_case.passed:
        return []
    values_case = next((c for c in parity.cases if c.case == "values"), None)
    if values_case is not None and not values_case.passed:
        frozen_by = (
            "the torchscript exporter traces one path"
            if exporter == "torchscript"
            else "the graph holds one path"
        )
        return [
            "passes at the export shape but fails at the same shape with other values: a branch or loop that "
            f"depends on input values was frozen ({frozen_by}); rewrite it with tensor ops (torch.where, "
            "torch.cond) or leave onnx out of --to"
        ]
    example = spec.example_sizes

    def changed(case: CaseResult) -> set[str]:
        return {label for label, size in case.sizes.items() if size != example[label]}

    suspects = set().union(*(changed(c) for c in parity.cases if not c.passed))
    cleared = set().union(*(changed(c) for c in parity.cases if c.passed and len(changed(c)) == 1))
    moved = sorted(suspects - cleared) or sorted(suspects)
    if not moved:
        return []
    advice = (
        "the torchscript exporter traces, freezing sizes that Python code turns into ints; try "
        "--onnx-exporter dynamo"
        if exporter == "torchscript"
        else "look for code that turns these sizes into Python ints or constants"
    )
    verb = "changes" if len(moved) == 1 else "change"
    return [
        f"passes at the export shape but fails when {', '.join(moved)} {verb}: a dim was frozen ({advice})"
    ]


def build_manifest(
    options: ExportOptions, run: RunRecord, golden_index: list[dict[str, Any]], staging: Path
) -> dict[str, Any]:
    environment, loaded, conversion, quantization = (
        run.environment,
        run.loaded,
        run.conversion,
        run.quantization,
    )
    onnx_backend = run.onnx
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": options.model_name,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tool": {"name": "exporter", "version": environment["exporter"]},
        "versions": environment["packages"] | {"python": environment["python"]},
        "machine": {k: environment[k] for k in ("platform", "cpu", "cpu_flags", "logical_cpus")},
        "threads": options.threads,
        "source": {
            "checkpoint": str(loaded.checkpoint),
            "format": loaded.format.value,
            "sha256": loaded.sha256,
            "bytes": loaded.file_size,
            "model": options.model_ref,
            "model_kwargs": dict(options.model_kwargs),
        },
        "onnx": {
            "file": "model.onnx",
            "candidate": onnx_backend.shipped,
            "opset": conversion.opset,
            "exporter": conversion.exporter,
            "input_names": conversion.input_names,
            "output_names": conversion.output_names,
        }
        if conversion is not None and onnx_backend is not None
        else None,
        "artifacts": [
            {
                "backend": b.backend,
                "file": b.file,
                "candidate": b.shipped,
                "verified": b.passed,
                "loader": _LOADERS[b.backend],
                **({"call": b.conversion["call"]} if "call" in b.conversion else {}),
            }
            for b in run.backends
            if b.file
        ],
        "output_names": run.golden[0].output_names,
        "input_spec": options.spec.to_json(),
        "tolerance": {"atol": options.atol, "rtol": options.rtol},
        "benchmark": {"batch_dim": options.batch_dim, "batch_sizes": list(options.batch_sizes)},
        "int8": _int8_manifest(quantization),
        "seed": options.seed,
        "golden": golden_index,
        "reference_nonfinite": run.nonfinite,
        "files": file_inventory(staging, exclude=RENDERED),
    }
