"""The CI gate (``exporter verify``): re-check an artifacts folder with the versions installed now.

Checks, each recorded as a ``Check``: every file's sha256 against the manifest; every artifact re-run on its
golden inputs against the golden outputs (or, with ``--checkpoint``, against the PyTorch model re-run now)
under the manifest's tolerances; a decoder's greedy tokens from its golden prompts (``gate/generation.py``),
through its lossy models too against their token floor; any other lossy model's parity budget against the
float ONNX model; and, with a baseline, each backend's p50
latency against the baseline's, both timed in this run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch

from exporter.backends.onnxruntime import INT8, ONNX
from exporter.benchmark.latency import BatchPlan, batch_plans, p50_per_plan
from exporter.benchmark.trust import LoadWatch, busy_machine
from exporter.documents.manifest import (
    BenchmarkEntry,
    GoldenCaseEntry,
    GoldenSamplesEntry,
    Int8Entry,
    Manifest,
    read_manifest,
)
from exporter.documents.report_model import read_report
from exporter.errors import UsageError, first_line
from exporter.gate.checks import (
    Check,
    LatencyBudget,
    VerifyRequest,
    VerifyResult,
    describe_exit,
    parse_percent,
)
from exporter.gate.files import (
    ArtifactRef,
    artifacts_of,
    check_models,
    folder_file,
    lossy_entries,
    model_file,
    named_files,
    open_artifact,
    read_npz,
    spec_of,
)
from exporter.gate.generation import check_generation_replay, replayed_lossy
from exporter.loading.checkpoint import LoadRequest, load_model, sha256_file
from exporter.loading.safe_paths import inside_folder
from exporter.quantize.budget import compare_int8
from exporter.runners.onnxruntime import OnnxRuntimeRunner
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec, ShapeCase
from exporter.verify.parity import GoldenCase, ParityResult, Tolerance, verify_runner

__all__ = [
    "Check",
    "LatencyBudget",
    "VerifyRequest",
    "VerifyResult",
    "describe_exit",
    "parse_percent",
    "read_manifest",
    "verify_artifacts",
]


def verify_artifacts(request: VerifyRequest, step: Callable[[str], None] | None = None) -> VerifyResult:
    """Run every check on ``request.folder``.

    Raises:
        ExporterError: the folder, checkpoint or baseline is bad input (exit 2).
    """
    report = step or (lambda message: None)
    manifest = read_manifest(request.folder)
    for name in named_files(manifest):
        folder_file(request.folder, name)
    check_models(request.folder, manifest)
    torch.set_num_threads(request.threads)
    result = VerifyResult(request.folder, manifest.name, [])
    report("checking file hashes")
    result.checks += _check_files(request.folder, manifest)
    spec = spec_of(manifest)
    golden = _golden(request, manifest, spec, result)
    result.reference = _reference(request, manifest, golden)
    tolerance = manifest.tolerance
    missing = {c.name.removeprefix("file ") for c in result.checks if c.kind == "integrity" and not c.passed}
    for entry in artifacts_of(manifest):
        if entry.file in missing and not folder_file(request.folder, entry.file).exists():
            continue
        report(f"re-running {entry.file} on the golden inputs")
        against = "the golden outputs" if request.checkpoint is None else "PyTorch from --checkpoint"
        check, parity = _check_parity(request, entry, spec, golden, tolerance, against=against)
        result.checks.append(check)
        result.parity += [parity] if parity is not None else []
    if manifest.generation is not None:
        report("generating greedy tokens from the golden prompts")
    checks, result.generation = check_generation_replay(
        request.folder, manifest, spec, request.threads, missing
    )
    result.checks += checks
    by_generation = replayed_lossy(manifest)
    for lossy in lossy_entries(manifest):
        if lossy.file in by_generation:
            continue  # a decoder's lossy model: its greedy tokens were replayed above, as they gated it
        name = f"{lossy.backend or 'int8'} budget"
        report(f"re-checking the budget of {lossy.file}")
        try:
            result.checks.append(_check_int8(request, manifest, spec, lossy, name))
        except UsageError:
            raise
        except Exception as error:
            result.checks.append(Check(name, "int8", False, f"cannot be re-checked: {first_line(error)}"))
        if lossy.judged_on == "synthetic":
            result.checks.append(_synthetic_evidence(lossy, request.require_real_data))
    if request.latency is not None:
        result.checks += _check_latency(request, manifest, spec, result, report)
    return result


def _check_parity(
    request: VerifyRequest,
    entry: ArtifactRef,
    spec: InputSpec,
    golden: list[GoldenCase],
    tolerance: Tolerance,
    *,
    against: str,
) -> tuple[Check, ParityResult | None]:
    """One artifact re-run on the golden inputs and compared with ``against`` (what made ``golden``'s
    outputs); one that cannot be loaded or compared fails the check."""
    name, started = f"parity {entry.backend}", time.perf_counter()
    try:
        runner = open_artifact(request.folder, entry, spec, request.threads)
    except Exception as error:
        return Check(name, "parity", False, f"{entry.file} cannot be loaded: {first_line(error)}"), None
    try:
        with runner:
            parity = verify_runner(runner, golden, tolerance, entry.file)
    except Exception as error:
        detail = f"{entry.file} cannot be compared with {against}: {first_line(error)}"
        return Check(name, "parity", False, detail), None
    failures = parity.failures()
    detail = (
        f"{entry.file}: {len(parity.cases)} golden cases within "
        f"atol={tolerance.atol:g} rtol={tolerance.rtol:g} of {against}"
    )
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        detail = f"{entry.file}: {failures[0]}{more}"
    return Check(name, "parity", parity.passed, detail, time.perf_counter() - started), parity


def _check_files(folder: Path, manifest: Manifest) -> list[Check]:
    checks = []
    for name, recorded in manifest.files.items():
        path = folder_file(folder, name)
        if not path.is_file():
            checks.append(Check(f"file {name}", "integrity", False, f"{name} is missing"))
            continue
        digest = sha256_file(path)
        if digest != recorded.sha256:
            checks.append(
                Check(
                    f"file {name}",
                    "integrity",
                    False,
                    f"{name} was modified after export "
                    f"(sha256 {digest[:12]}... != manifest {recorded.sha256[:12]}...)",
                )
            )
    if not manifest.files:
        checks.append(Check("files", "integrity", False, "the manifest lists no files"))
    elif not checks:
        checks.append(
            Check("files", "integrity", True, f"{len(manifest.files)} files match their manifest sha256")
        )
    return checks


def _golden(
    request: VerifyRequest, manifest: Manifest, spec: InputSpec, result: VerifyResult
) -> list[GoldenCase]:
    """Golden cases from the files; with a checkpoint, the reference outputs come from PyTorch now."""
    golden = []
    for entry in manifest.golden:
        if not isinstance(entry, GoldenCaseEntry):
            continue
        try:
            file = entry.inputs
            arrays = read_npz(folder_file(request.folder, file))
            file = entry.outputs
            outputs = read_npz(folder_file(request.folder, file))
            expected = [outputs[n] for n in entry.output_names]
        except UsageError:
            raise
        except Exception as error:
            detail = f"{file} cannot be read: {first_line(error)}"
            if isinstance(error, KeyError):
                detail = f"{file} has no output {first_line(error)}"
            result.checks.append(Check(f"golden {entry.case}", "integrity", False, detail))
            continue
        case = ShapeCase(entry.case, dict(entry.sizes))
        golden.append(GoldenCase(case, entry.seed, arrays, expected, list(entry.output_names)))
    if request.checkpoint is None:
        return golden
    source = manifest.source
    loaded = load_model(
        LoadRequest(
            request.checkpoint,
            request.model_ref or source.model,
            source.model_kwargs,
            request.trust_checkpoint,
            request.state_dict_key or source.state_dict_key,
        )
    )
    eager = EagerRunner(loaded.module, spec.names)
    for item in golden:
        item.outputs = eager.run(item.inputs)
    return golden


def _reference(request: VerifyRequest, manifest: Manifest, golden: list[GoldenCase]) -> str:
    """What the artifacts' outputs were compared with, and on which cases: said in the verdict."""
    cases = ", ".join(item.case.name for item in golden) or "none"
    if request.checkpoint is None:
        return f"the golden outputs saved at export (cases {cases})"
    model = request.model_ref or manifest.source.model
    built = f", built by {model}" if model else ""
    return (
        f"PyTorch eager from the checkpoint {request.checkpoint}{built}, re-run now on the golden inputs "
        f"(cases {cases}), not the golden output files"
    )


def _synthetic_evidence(lossy: Int8Entry, required: bool) -> Check:
    """A lossy model judged only on inputs drawn from the spec: said in every verify, and a failure (exit 2)
    when the gate requires real data."""
    detail = (
        f"{lossy.file} was judged on synthetic inputs only (drawn from the input spec) at export: its "
        "parity on real data is unproven; re-export with --calibration FILE.npz of real inputs"
    )
    return Check(f"{lossy.backend or 'int8'} real data", "evidence", not required, detail)


def _check_int8(
    request: VerifyRequest, manifest: Manifest, spec: InputSpec, int8: Int8Entry, name: str
) -> Check:
    """A lossy model against the float ONNX model on the kept evaluation samples, under the saved budget."""
    entry = next(
        (g for g in manifest.golden if isinstance(g, GoldenSamplesEntry) and g.case == "int8-eval"), None
    )
    if entry is None:
        return Check(name, "int8", False, "the manifest has a lossy model but no int8-eval samples")
    data = read_npz(folder_file(request.folder, entry.inputs))
    samples = [{name: data[f"{name}.{index}"] for name in spec.names} for index in range(entry.samples)]
    budget = int8.budget  # the manifest holds the ParityBudget itself
    started = time.perf_counter()
    outputs = []
    with OnnxRuntimeRunner(model_file(request.folder, str(ONNX.file)), request.threads) as runner:
        outputs.append([runner.run(sample) for sample in samples])
    lossy = ArtifactRef(int8.backend or INT8.name, int8.file, None, int8.config)
    with open_artifact(request.folder, lossy, spec, request.threads) as runner:
        outputs.append([runner.run(sample) for sample in samples])
    names = manifest.output_names or [f"output_{i}" for i in range(len(outputs[0][0]))]
    comparisons = [
        compare_int8(name, [o[i] for o in outputs[1]], [o[i] for o in outputs[0]], budget)
        for i, name in enumerate(names)
    ]
    passed = all(c.passed for c in comparisons)
    worst = min(c.min_cosine for c in comparisons)
    detail = (
        f"{int8.file} vs {ONNX.file} on {len(samples)} samples: min cosine {worst:.4f} ({budget.describe()})"
    )
    if not passed:
        detail += ": " + "; ".join(c.message or "outside budget" for c in comparisons if not c.passed)
    return Check(name, "int8", passed, detail, time.perf_counter() - started)


def _check_latency(
    request: VerifyRequest,
    manifest: Manifest,
    spec: InputSpec,
    result: VerifyResult,
    report: Callable[[str], None],
) -> list[Check]:
    """Time every artifact here and the baseline's same artifact in this run, one at a time."""
    assert request.latency is not None
    budget = request.latency
    baseline_folder = budget.baseline_report.parent
    try:
        baseline = read_report(baseline_folder, budget.baseline_report.name)
    except UsageError as error:
        raise UsageError(f"--baseline '{budget.baseline_report}' cannot be used: {error}") from None
    recorded = {(s.backend, s.label): float(s.p50_ms) for s in baseline.latency}
    settings = manifest.benchmark or BenchmarkEntry(batch_dim="batch", batch_sizes=[1, 8])
    plans = batch_plans(spec, settings.batch_dim, tuple(settings.batch_sizes), manifest.seed)
    entries = artifacts_of(manifest)
    entries += [ArtifactRef(e.backend or INT8.name, e.file, None, e.config) for e in lossy_entries(manifest)]
    checks = []
    watch = LoadWatch()
    for entry in entries:
        report(f"timing {entry.file} here and in the baseline")
        with watch:
            sides = _time_sides(
                entry, spec, request, {"baseline": baseline_folder, "current": request.folder}, plans
            )
        busy = "; ".join(w.message for w in busy_machine(watch.load, request.threads))
        busy = f" (timing not trustworthy: {busy})" if busy else ""
        for plan in plans:
            current = sides.get("current", {}).get(plan.label)
            reference = sides.get("baseline", {}).get(plan.label)
            origin = "re-timed in this run"
            if reference is None:
                reference = recorded.get((entry.backend, plan.label))
                origin = "from the baseline report"
            if current is None or reference is None:
                continue
            allowed = reference * (1 + budget.max_regression)
            change = current / reference - 1
            result.latency.append(
                {
                    "backend": entry.backend,
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
                    f"latency {entry.backend} {plan.label}",
                    "latency",
                    current <= allowed,
                    f"p50 {current:.3f} ms vs baseline {reference:.3f} ms ({origin}): {change:+.1%}, "
                    f"budget {budget.max_regression:+.0%}{busy}",
                )
            )
    if not checks:
        checks.append(
            Check("latency", "latency", False, "nothing to compare: no artifact timed on both sides")
        )
    return checks


def _time_sides(
    entry: ArtifactRef,
    spec: InputSpec,
    request: VerifyRequest,
    folders: dict[str, Path],
    plans: list[BatchPlan],
) -> dict[str, dict[str, float]]:
    """p50 per plan of the same artifact in each folder that has it, timed in alternating blocks."""
    present = {}
    for side, folder in folders.items():
        named_by = f"manifest.json of '{request.folder}'" + (
            f" (in the baseline folder '{folder}')" if side == "baseline" else ""
        )
        if inside_folder(folder, entry.file, named_by).is_file():
            present[side] = folder
    with contextlib.ExitStack() as stack:
        runners = [
            stack.enter_context(open_artifact(folder, entry, spec, request.threads))
            for folder in present.values()
        ]
        timings = p50_per_plan(runners, plans, config=request.timing, threads=request.threads)
    return dict(zip(present, timings, strict=True))
