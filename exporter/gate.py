"""The CI gate (``exporter verify``): re-check an artifacts folder with the versions installed now.

Checks, each recorded as a ``Check``: every file's sha256 against the manifest; every artifact re-run on its
golden inputs against the golden outputs (or, with ``--checkpoint``, against the PyTorch model re-run now)
under the manifest's tolerances; the int8 model's parity budget against the float ONNX model; and, with a
baseline, each backend's p50 latency against the baseline's, both timed in this run.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter._manifest_check import manifest_problem
from exporter._safe_paths import inside_folder
from exporter.artifacts import MANIFEST_SCHEMA_VERSION, read_document
from exporter.benchmark import TimingConfig, batch_plans, p50_per_plan
from exporter.errors import ExitCode, UsageError, first_line
from exporter.loading import LoadRequest, load_model, sha256_file
from exporter.quantize.budget import ParityBudget, compare_int8
from exporter.runners import (
    AotInductorRunner,
    CallConvention,
    EagerRunner,
    OnnxRuntimeRunner,
    Runner,
    TorchScriptRunner,
)
from exporter.specs import DynamicDim, InputSpec, ShapeCase, parse_tensor_spec
from exporter.verify import GoldenCase, ParityResult, Tolerance, verify_runner

__all__ = [
    "Check",
    "LatencyBudget",
    "VerifyRequest",
    "VerifyResult",
    "parse_percent",
    "read_manifest",
    "verify_artifacts",
]


@dataclass(frozen=True)
class LatencyBudget:
    """``max_regression`` 0.10 allows a p50 10 % slower than the baseline; negative demands a speedup."""

    baseline_report: Path
    max_regression: float


@dataclass(frozen=True)
class VerifyRequest:
    folder: Path
    checkpoint: Path | None = None
    model_ref: str | None = None
    trust_checkpoint: bool = False
    latency: LatencyBudget | None = None
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) or 1)
    timing: TimingConfig = field(default_factory=TimingConfig)


@dataclass
class Check:
    """One gate check: ``kind`` is integrity, parity, int8 or latency."""

    name: str
    kind: str
    passed: bool
    detail: str
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyResult:
    folder: Path
    name: str
    checks: list[Check]
    parity: list[ParityResult] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        """1 when an artifact is wrong (hash, parity, int8 budget); else 4 when only latency missed."""
        if any(not c.passed and c.kind != "latency" for c in self.checks):
            return ExitCode.VERIFICATION_FAILED
        if any(not c.passed for c in self.checks):
            return ExitCode.LATENCY_REGRESSED
        return ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "name": self.name,
            "exit_code": int(self.exit_code),
            "passed": self.exit_code is ExitCode.OK,
            "checks": [c.to_json() for c in self.checks],
            "parity": [p.to_json() for p in self.parity],
            "latency": self.latency,
        }


def parse_percent(text: str) -> float:
    """``10%``, ``10`` or ``0.1%`` -> a fraction (0.10); negative values demand a speedup.

    Raises:
        UsageError: not a number.
    """
    stripped = text.strip().removesuffix("%")
    try:
        return float(stripped) / 100.0
    except ValueError:
        raise UsageError(f"--max-latency-regression '{text}' is not a percentage like 10%") from None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, with every field the gate reads present and of the right type.

    Checked up front so a damaged or foreign manifest is one line of bad input (exit 2), not a
    ``KeyError`` halfway through the checks.

    Raises:
        UsageError: not an artifacts folder (no or unreadable manifest, unknown schema version), or a
            required field is missing or of the wrong type.
    """
    manifest = read_document(folder, "manifest.json", MANIFEST_SCHEMA_VERSION)
    problem = manifest_problem(manifest)
    if problem:
        raise UsageError(
            f"manifest.json of '{folder}' {problem} (not a manifest written by this exporter, or damaged)"
        )
    return manifest


def _file(folder: Path, name: str) -> Path:
    """``folder / name`` for a name the manifest gives, refused unless it stays inside the folder."""
    return inside_folder(folder, name, f"manifest.json of '{folder}'")


def _named_files(manifest: dict[str, Any]) -> list[str]:
    """Every path the manifest names, so all are checked before any file is hashed or loaded."""
    names = list(manifest["files"])
    names += [entry["file"] for entry in artifacts_of(manifest)]
    names += [g[key] for g in manifest["golden"] for key in ("inputs", "outputs") if key in g]
    if manifest.get("int8"):
        names += ["model.onnx", manifest["int8"]["file"]]  # the int8 check compares against model.onnx
    return names


def verify_artifacts(request: VerifyRequest, step: Callable[[str], None] | None = None) -> VerifyResult:
    """Run every check on ``request.folder``.

    Raises:
        ExporterError: the folder, checkpoint or baseline is bad input (exit 2).
    """
    report = step or (lambda message: None)
    manifest = read_manifest(request.folder)
    for name in _named_files(manifest):
        _file(request.folder, name)
    torch.set_num_threads(request.threads)
    result = VerifyResult(request.folder, str(manifest.get("name", request.folder.name)), [])
    report("checking file hashes")
    result.checks += _check_files(request.folder, manifest)
    spec = spec_from_manifest(manifest)
    golden = _golden(request, manifest, spec, result)
    tolerance = Tolerance(float(manifest["tolerance"]["atol"]), float(manifest["tolerance"]["rtol"]))
    missing = {c.name.removeprefix("file ") for c in result.checks if c.kind == "integrity" and not c.passed}
    for entry in artifacts_of(manifest):
        if entry["file"] in missing and not _file(request.folder, entry["file"]).exists():
            continue
        report(f"re-running {entry['file']} on the golden inputs")
        started = time.perf_counter()
        try:
            runner = open_artifact(request.folder, entry, spec, request.threads)
        except Exception as error:
            result.checks.append(
                Check(
                    f"parity {entry['backend']}",
                    "parity",
                    False,
                    f"{entry['file']} cannot be loaded: {first_line(error)}",
                )
            )
            continue
        try:
            parity = verify_runner(runner, golden, tolerance, entry["file"])
        except Exception as error:
            result.checks.append(
                Check(
                    f"parity {entry['backend']}",
                    "parity",
                    False,
                    f"{entry['file']} cannot be compared with the golden outputs: {first_line(error)}",
                )
            )
            continue
        finally:
            del runner
            gc.collect()
        result.parity.append(parity)
        failures = parity.failures()
        detail = (
            f"{entry['file']}: {len(parity.cases)} golden cases within "
            f"atol={tolerance.atol:g} rtol={tolerance.rtol:g}"
        )
        if failures:
            detail = f"{entry['file']}: {failures[0]}" + (
                f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
            )
        result.checks.append(
            Check(
                f"parity {entry['backend']}", "parity", parity.passed, detail, time.perf_counter() - started
            )
        )
    if manifest.get("int8"):
        report("re-checking the int8 budget")
        try:
            result.checks.append(_check_int8(request, manifest, spec))
        except Exception as error:
            result.checks.append(
                Check("int8 budget", "int8", False, f"cannot be re-checked: {first_line(error)}")
            )
    if request.latency is not None:
        result.checks += _check_latency(request, manifest, spec, result, report)
    return result


def spec_from_manifest(manifest: dict[str, Any]) -> InputSpec:
    inputs = manifest["input_spec"]
    tensors = tuple(parse_tensor_spec(i["spec"]) for i in inputs["inputs"])
    dims = tuple(DynamicDim(label, d["min"], d["max"]) for label, d in inputs["dynamic_dims"].items())
    return InputSpec(tensors, dims)


def artifacts_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Artifact entries (older manifests list only the ONNX model)."""
    if "artifacts" in manifest:
        return list(manifest["artifacts"])
    onnx = manifest.get("onnx")
    return [{"backend": "onnxruntime", "file": onnx["file"]}] if onnx else []


def open_artifact(folder: Path, entry: dict[str, Any], spec: InputSpec, threads: int) -> Runner:
    """A runner for one artifact, loaded with the loader a deployment uses.

    Raises:
        UsageError: the entry names a file outside ``folder`` or a symlink, or an unknown backend.
    """
    path = _file(folder, entry["file"])
    backend = entry["backend"]
    if backend.startswith("onnxruntime"):
        return OnnxRuntimeRunner(path, threads, name=backend)
    if backend == "torchscript":
        return TorchScriptRunner(path, spec.names)
    if backend == "aotinductor":
        call = entry.get("call", {"positional": list(spec.names), "keyword": []})
        convention = CallConvention(
            tuple(call["positional"]), tuple(call["keyword"]), by_name=bool(call["keyword"])
        )
        return AotInductorRunner(path, convention, spec.names)
    raise UsageError(f"manifest lists {entry['file']} for unknown backend '{backend}'")


def _check_files(folder: Path, manifest: dict[str, Any]) -> list[Check]:
    checks = []
    for name, recorded in manifest.get("files", {}).items():
        path = _file(folder, name)
        if not path.is_file():
            checks.append(Check(f"file {name}", "integrity", False, f"{name} is missing"))
            continue
        digest = sha256_file(path)
        if digest != recorded["sha256"]:
            checks.append(
                Check(
                    f"file {name}",
                    "integrity",
                    False,
                    f"{name} was modified after export "
                    f"(sha256 {digest[:12]}... != manifest {recorded['sha256'][:12]}...)",
                )
            )
    recorded_files = manifest.get("files", {})
    if not recorded_files:
        checks.append(Check("files", "integrity", False, "the manifest lists no files"))
    elif not checks:
        checks.append(
            Check("files", "integrity", True, f"{len(recorded_files)} files match their manifest sha256")
        )
    return checks


def _golden(
    request: VerifyRequest, manifest: dict[str, Any], spec: InputSpec, result: VerifyResult
) -> list[GoldenCase]:
    """Golden cases from the files; with a checkpoint, the reference outputs come from PyTorch now."""
    golden = []
    for entry in manifest["golden"]:
        if "outputs" not in entry:
            continue
        try:
            file = entry["inputs"]
            arrays = _read_npz(_file(request.folder, file))
            file = entry["outputs"]
            outputs = _read_npz(_file(request.folder, file))
            expected = [outputs[n] for n in entry["output_names"]]
        except UsageError:
            raise
        except Exception as error:
            detail = f"{file} cannot be read: {first_line(error)}"
            if isinstance(error, KeyError):
                detail = f"{file} has no output {first_line(error)}"
            result.checks.append(Check(f"golden {entry['case']}", "integrity", False, detail))
            continue
        golden.append(
            GoldenCase(
                ShapeCase(entry["case"], dict(entry["sizes"])),
                entry["seed"],
                arrays,
                expected,
                list(entry["output_names"]),
            )
        )
    if request.checkpoint is None:
        return golden
    source = manifest.get("source") or {}
    loaded = load_model(
        LoadRequest(
            request.checkpoint,
            request.model_ref or source.get("model"),
            source.get("model_kwargs") or {},
            request.trust_checkpoint,
        )
    )
    eager = EagerRunner(loaded.module, spec.names)
    for item in golden:
        item.outputs = eager.run(item.inputs)
    return golden


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a golden ``.npz`` (never unpickled).

    Raises:
        Exception: whatever a damaged file makes numpy or zipfile raise; the caller reports it.
    """
    with path.open("rb") as handle:  # numpy leaks its own handle when the zip directory is damaged
        loaded = np.load(handle, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with loaded:
            return {name: loaded[name] for name in loaded.files}


def _check_int8(request: VerifyRequest, manifest: dict[str, Any], spec: InputSpec) -> Check:
    """The int8 model against the float ONNX model on the kept evaluation samples, under the saved budget."""
    int8 = manifest["int8"]
    entry = next((g for g in manifest["golden"] if g["case"] == "int8-eval"), None)
    if entry is None:
        return Check("int8 budget", "int8", False, "the manifest has an int8 model but no int8-eval samples")
    data = _read_npz(_file(request.folder, entry["inputs"]))
    samples = [{name: data[f"{name}.{index}"] for name in spec.names} for index in range(entry["samples"])]
    budget = ParityBudget(**int8["budget"])
    started = time.perf_counter()
    outputs = []
    for file in ("model.onnx", int8["file"]):
        runner = OnnxRuntimeRunner(_file(request.folder, file), request.threads)
        outputs.append([runner.run(sample) for sample in samples])
        del runner
    names = manifest.get("output_names") or [f"output_{i}" for i in range(len(outputs[0][0]))]
    comparisons = [
        compare_int8(name, [o[i] for o in outputs[1]], [o[i] for o in outputs[0]], budget)
        for i, name in enumerate(names)
    ]
    passed = all(c.passed for c in comparisons)
    worst = min(c.min_cosine for c in comparisons)
    detail = (
        f"{int8['file']} vs model.onnx on {len(samples)} samples: min cosine {worst:.4f} "
        f"({budget.describe()})"
    )
    if not passed:
        detail += ": " + "; ".join(c.message or "outside budget" for c in comparisons if not c.passed)
    return Check("int8 budget", "int8", passed, detail, time.perf_counter() - started)


def _check_latency(
    request: VerifyRequest,
    manifest: dict[str, Any],
    spec: InputSpec,
    result: VerifyResult,
    report: Callable[[str], None],
) -> list[Check]:
    """Time every artifact here and the baseline's same artifact in this run, one at a time."""
    assert request.latency is not None
    budget = request.latency
    try:
        baseline = json.loads(budget.baseline_report.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(
            f"--baseline '{budget.baseline_report}' cannot be read: {first_line(error)}"
        ) from None
    baseline_folder = budget.baseline_report.parent
    recorded = {(s["backend"], s["label"]): s["p50_ms"] for s in baseline.get("latency", [])}
    settings = manifest.get("benchmark", {"batch_dim": "batch", "batch_sizes": [1, 8]})
    plans = batch_plans(
        spec, settings["batch_dim"], tuple(settings["batch_sizes"]), int(manifest.get("seed", 0))
    )
    entries = list(artifacts_of(manifest))
    if manifest.get("int8"):
        entries.append({"backend": "onnxruntime-int8", "file": manifest["int8"]["file"]})
    checks = []
    for entry in entries:
        sides: dict[str, dict[str, float]] = {}
        for side, folder in (("baseline", baseline_folder), ("current", request.folder)):
            named_by = f"manifest.json of '{request.folder}'" + (
                f" (in the baseline folder '{folder}')" if side == "baseline" else ""
            )
            if not inside_folder(folder, entry["file"], named_by).is_file():
                continue
            report(f"timing {side} {entry['file']}")
            runner = open_artifact(folder, entry, spec, request.threads)
            sides[side] = p50_per_plan(runner, plans, config=request.timing, threads=request.threads)
            del runner
            gc.collect()
        for plan in plans:
            current = sides.get("current", {}).get(plan.label)
            reference = sides.get("baseline", {}).get(plan.label)
            origin = "re-timed in this run"
            if reference is None:
                reference = recorded.get((entry["backend"], plan.label))
                origin = "from the baseline report"
            if current is None or reference is None:
                continue
            allowed = reference * (1 + budget.max_regression)
            change = current / reference - 1
            result.latency.append(
                {
                    "backend": entry["backend"],
                    "label": plan.label,
                    "p50_ms": current,
                    "baseline_p50_ms": reference,
                    "baseline_origin": origin,
                    "change": change,
                    "allowed_ms": allowed,
                }
            )
            checks.append(
                Check(
                    f"latency {entry['backend']} {plan.label}",
                    "latency",
                    current <= allowed,
                    f"p50 {current:.3f} ms vs baseline {reference:.3f} ms ({origin}): {change:+.1%}, "
                    f"budget {budget.max_regression:+.0%}",
                )
            )
    if not checks:
        checks.append(
            Check("latency", "latency", False, "nothing to compare: no artifact timed on both sides")
        )
    return checks


def describe_exit(result: VerifyResult) -> str:
    failed = [c for c in result.checks if not c.passed]
    if not failed:
        return f"{len(result.checks)} checks passed"
    return f"{len(failed)} of {len(result.checks)} checks failed: " + "; ".join(c.detail for c in failed[:3])
