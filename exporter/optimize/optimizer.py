"""Graph optimization stage: make the verified float ONNX model faster on CPU, one measured pass at a time.

The passes (:data:`exporter.optimize.passes.PASSES`: ``transformer``, ``splitnorm``, ``fp16``, ``ort``) each
say what they need and do; ``auto`` picks the transformer ones when the graph has attention, a recipe or
``--optimize`` can name any. For a transformer whose own graph does not reach the Attention fusion, the
TorchScript-based exporter's graph is made too and both are tried (the fusions match its graphs far better:
on a 6-layer BERT 6 Attention fusions against none; on the trained MiniLM the dynamo graph's LayerNorm/Gelu
fusions plus ``splitnorm`` still won: x0.56 of unoptimized, portable).

A pass's output is kept only if it verifies against the golden cases and is not slower than its input
(beyond ``max_slowdown``); otherwise it is dropped and the report says why. ``model.onnx`` ships the fastest
verified variant whose nodes all use standard ONNX domains (``portable``), so any ONNX runtime can run it;
when the fastest variant overall holds ONNX Runtime-specific ops (``com.microsoft``, from the transformer
fusions or the ``ort`` pass) and beats the portable one by more than ``max_slowdown``, timed side by side,
it ships too, as ``model.ort.onnx`` (``runtime_specific``). Int8 starts from the best result before any pass
that is not ``quantizable``.

Memory: the passes run on working copies whose weights sit in one ``.data`` file (``working_copies``), read
and written by path; at most one ONNX Runtime session is open at a time for models past
``JOINT_TIMING_BYTES``; freed heap pages go back to the OS after each pass. A model past 2 GB works the same
way; what ships leaves in the form it arrived in (self-contained, or with its one ``.data`` file).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from exporter._heap import release_freed_memory
from exporter._quiet import quiet
from exporter.benchmark.latency import BatchPlan, TimingConfig, p50_per_plan
from exporter.convert.onnx_files import data_file_name, model_files
from exporter.errors import first_line
from exporter.optimize.graph_facts import infer_attention_shape, looks_like_transformer, nonstandard_domains
from exporter.optimize.passes import OPTIMIZE_STEPS, pass_named, resolve_steps, split_skip_layer_norm
from exporter.optimize.results import (
    OptimizationResult,
    OptimizeOptions,
    StepRecord,
    Variant,
    _latency_rows,
    _score,
    _Trail,
)
from exporter.optimize.working_copies import WorkingCopies
from exporter.runners.onnxruntime import OnnxRuntimeRunner
from exporter.runners.pytorch import EagerRunner
from exporter.verify.parity import GoldenCase, ParityResult, Tolerance, verify_runner

__all__ = [
    "OPTIMIZE_STEPS",
    "OptimizationResult",
    "OptimizeOptions",
    "StepRecord",
    "infer_attention_shape",
    "looks_like_transformer",
    "nonstandard_domains",
    "optimize_onnx",
    "resolve_steps",
    "split_skip_layer_norm",
]

JOINT_TIMING_BYTES = 512 * 2**20
"""Models whose files add up to more than this are timed one at a time (see ``_time_paths``)."""
DECISION_TIMING = TimingConfig(warmup=3, min_runs=15, min_seconds=0.5, max_runs=2000, max_seconds=5.0)
RUNTIME_SPECIFIC_RECORD = "runtime-specific"
ALTERNATIVE_LIMIT_BYTES = 256 * 2**20
"""Above this many bytes of model, the TorchScript-based exporter's graph is not made: that exporter builds
the whole model in memory (measured: +2 GiB, a 4.4 GiB peak, on a 0.94 GiB model, with or without
external data), which alone breaks the export's budget of 3x the weights."""


@dataclass(frozen=True)
class OptimizeRequest:
    model: Path
    label: str
    parity: ParityResult
    golden: Sequence[GoldenCase]
    tolerance: Tolerance
    plans: Sequence[BatchPlan]
    threads: int
    work_dir: Path
    options: OptimizeOptions
    alternative: Callable[[], Path] | None = None
    timing: TimingConfig = DECISION_TIMING


def optimize_onnx(request: OptimizeRequest, step: Callable[[str], None] | None = None) -> OptimizationResult:
    """Run the steps on the verified model (and on the alternative exporter's graph, for transformers)."""
    report = step or (lambda message: None)
    request.work_dir.mkdir(parents=True, exist_ok=True)
    release_freed_memory()  # what conversion and verification freed
    steps = resolve_steps(request.options, request.model)
    # Steps are kept or dropped on the first batch plan alone; what ships is timed at every plan later.
    ranking = replace(request, plans=request.plans[:1])
    copies = WorkingCopies(request.work_dir / "sources")
    model = copies.of(request.model, request.label)
    report("timing the unoptimized model")
    baseline = Variant(request.label, model, request.parity, _time_paths([model], ranking)[0], model)
    trail = _Trail(variants=[baseline])
    finals = [_run_steps(baseline, steps, ranking, trail, report)]
    until = {s: pass_named(s).alternative_until for s in steps if pass_named(s).alternative_until}
    if until and request.alternative is not None:
        skipped = _why_no_alternative(trail, until, model)
        if skipped is not None:
            record = _recorder(trail.records, "alternative exporter", request.label, "torchscript-exporter")
            record(False, f"not made: {skipped}")
        else:
            alternative = _alternative_source(ranking, trail, report, copies)
            if alternative is not None:
                finals.append(_run_steps(alternative, steps, ranking, trail, report))
    best = min(finals, key=lambda v: v.score)
    if best is not baseline and best.score > baseline.score * (1 + request.options.max_slowdown):
        best = baseline
    domains = {v.label: nonstandard_domains(v.path) for v in trail.variants}
    standard = [v for v in trail.variants if not domains[v.label]]
    # The baseline is the exporter's own graph; should it hold contrib ops, nothing here is portable.
    portable = min(standard, key=lambda v: v.score) if standard else baseline
    result = OptimizationResult(steps, trail.records, baseline, best, trail.parity, portable, domains=domains)
    if domains[best.label] and best is not portable:
        report(f"timing {best.label} against {portable.label}")
        _compare_runtime_specific(result, request)
    copies.hand_over(result, trail.variants)
    return result


def _run_steps(
    source: Variant,
    steps: Sequence[str],
    request: OptimizeRequest,
    trail: _Trail,
    report: Callable[[str], None],
) -> Variant:
    """Each step in turn on ``source``; returns the last variant kept."""
    current, slower = source, None
    for name in steps:
        report(f"{name} on the {current.label} model")
        produced, dropped = _apply(name, current, request, trail)
        if slower is not None:
            # The previous step verified but was slower alone; this one may pay for it (the
            # transformer fusions make SkipLayerNormalization, which splitnorm then makes fast).
            report(f"{name} on the {slower.label} model")
            combined, _ = _apply(name, slower, request, trail, against=current)
            if combined is not None and (produced is None or combined.score < produced.score):
                produced = combined
        slower = dropped
        if produced is not None:
            current = produced
    return current


def _fused_by(trail: _Trail, until: dict[str, str | None]) -> tuple[str, str] | None:
    """(the model, the operator) where a kept pass fused the operator after which the alternative exporter's
    graph is not worth making, if one did."""
    for record in trail.records:
        op = until.get(record.name)
        if op and record.kept and record.fused.get(op, 0) > 0:
            return record.source, op
    return None


def only_load_time_rewrites(portable: str, fastest: str) -> bool:
    """The fastest variant is the portable one plus ``session_load`` passes alone (``ort``): a session opens
    model.onnx at ORT_ENABLE_ALL and makes the same rewrites when it loads, so the two run alike and a
    timing that prefers one is noise (measured: x0.93 to x1.11 between runs on the tiny encoder)."""
    if not fastest.startswith(f"{portable}+"):
        return False
    added = fastest[len(portable) + 1 :].split("+")
    return all(name in OPTIMIZE_STEPS and pass_named(name).session_load for name in added)


def _compare_runtime_specific(result: OptimizationResult, request: OptimizeRequest) -> None:
    """Time the portable model and the fastest (runtime-specific) one together, in alternating blocks, and
    keep the latter as its own artifact only when it is faster by more than ``max_slowdown`` at every batch
    size (a win on the average alone is often noise) and holds more than ONNX Runtime's load-time
    rewrites."""
    portable, best = result.portable, result.best
    record = _recorder(result.records, RUNTIME_SPECIFIC_RECORD, portable.label, best.label)
    uses = ", ".join(sorted(result.domains[best.label]))
    if only_load_time_rewrites(portable.label, best.label):
        record(False, f"only ONNX Runtime's own load-time rewrites ({uses}): the session makes them too")
        return
    portable_latency, best_latency = _time_paths([portable.path, best.path], request)
    ratio = _score(best_latency) / _score(portable_latency)
    result.runtime_specific_ratio = ratio
    every_plan = all(
        best_latency[plan] * (1 + request.options.max_slowdown) < portable_latency[plan]
        for plan in portable_latency
    )
    if every_plan:
        result.runtime_specific = best
        record(True, f"ships beside the portable model: p50 x{ratio:.2f} of it; uses {uses}", best_latency)
    else:
        record(False, f"not faster: p50 x{ratio:.2f} of the portable model; uses {uses}", best_latency)


def _why_no_alternative(trail: _Trail, until: dict[str, str | None], model: Path) -> str | None:
    """Why the TorchScript-based exporter's graph is not made, or None to make it."""
    fused_by = _fused_by(trail, until)
    if fused_by is not None:
        return f"{fused_by[0]} already reached the {fused_by[1]} fusion"
    size = sum(p.stat().st_size for p in model_files(model))
    if size > ALTERNATIVE_LIMIT_BYTES:
        return (
            f"the model is {size / 2**30:.2f} GiB, and the TorchScript-based exporter holds about 3x that in "
            f"memory (made up to {ALTERNATIVE_LIMIT_BYTES >> 20} MiB)"
        )
    return None


def _alternative_source(
    request: OptimizeRequest, trail: _Trail, report: Callable[[str], None], copies: WorkingCopies
) -> Variant | None:
    """The TorchScript-based exporter's graph of the same model, verified and timed, as a second source."""
    assert request.alternative is not None
    report("exporting with the TorchScript-based exporter for the transformer fusions")
    label = "torchscript-exporter"
    record = _recorder(trail.records, "alternative exporter", request.label, label)
    try:
        path = copies.of(request.alternative(), label)
    except Exception as error:
        record(False, f"export failed: {first_line(error)}")
        return None
    finally:
        release_freed_memory()  # the second export's graph and traced copies
    result = _verify(path, label, request)
    trail.parity.append(result)
    if not result.passed:
        record(False, f"failed verification: {result.failures()[0]}")
        return None
    latency = _time_paths([path], request)[0]
    record(True, "verified; tried as a second source", latency)
    trail.variants.append(Variant(label, path, result, latency, path))
    return trail.variants[-1]


def _recorder(records: list[StepRecord], name: str, source: str, result: str) -> Callable[..., None]:
    """``record(kept, reason, latency=None, fused=None)``: appends one StepRecord timed from this call."""
    started = time.perf_counter()

    def record(
        kept: bool, reason: str, latency: dict[str, float] | None = None, fused: dict[str, int] | None = None
    ) -> None:
        seconds = time.perf_counter() - started
        rows = _latency_rows(latency) if latency else []
        records.append(StepRecord(name, source, result, kept, reason, seconds, rows, dict(fused or {})))

    return record


def _apply(
    name: str,
    current: Variant,
    request: OptimizeRequest,
    trail: _Trail,
    *,
    against: Variant | None = None,
) -> tuple[Variant | None, Variant | None]:
    """Build, verify and time one step on ``current``: (the kept variant, or None; the variant dropped only
    for being slower, or None). ``against`` is what it must beat, when not ``current`` itself."""
    base = against or current
    label = f"{current.label}+{name}"
    target = request.work_dir / f"{label}.onnx"
    record = _recorder(trail.records, name, current.label, label)
    step = pass_named(name)
    try:
        with warnings.catch_warnings(), quiet():
            warnings.simplefilter("ignore")
            built = step(current.path, target, request)
    except Exception as error:
        record(False, f"failed: {first_line(error)}")
        return None, None
    finally:
        release_freed_memory()  # the pass's loaded model is gone; its pages go before the sessions open
    fused = built.counts
    if not built.modified:
        record(False, step.unmodified, fused=fused)
        return None, None
    result = _verify(target, label, request)
    trail.parity.append(result)
    if not result.passed:
        failures = result.failures()
        record(False, f"failed verification: {failures[0] if failures else ''}", fused=fused)
        return None, None
    base_latency, latency = _time_paths([base.path, target], request)
    produced = Variant(label, target, result, latency, target if step.quantizable else current.quantizable)
    trail.variants.append(produced)
    ratio = produced.score / Variant(base.label, base.path, base.parity, base_latency, base.path).score
    of = "its input" if against is None else f"{base.label} (on the {current.label} model, slower alone)"
    if ratio > 1 + request.options.max_slowdown:
        record(False, f"slower: p50 x{ratio:.2f} of {of}", latency, fused)
        return None, produced
    record(True, f"verified; p50 x{ratio:.2f} of {of}", latency, fused)
    return produced, None


def _verify(path: Path, label: str, request: OptimizeRequest) -> ParityResult:
    try:
        runner = OnnxRuntimeRunner(path, request.threads)
    except Exception as error:
        from exporter.verify.parity import CaseResult

        failure = CaseResult("load", {}, {}, error=f"ONNX Runtime cannot load it: {first_line(error)}")
        return ParityResult(OnnxRuntimeRunner.name, label, EagerRunner.name, request.tolerance, [failure])
    with runner:
        return verify_runner(runner, request.golden, request.tolerance, label)


def _time_paths(paths: Sequence[Path], request: OptimizeRequest) -> list[dict[str, float]]:
    """p50 per plan of each model, timed in alternating blocks in one session each, so a step and its input
    share the machine's drift; models whose weights together pass ``JOINT_TIMING_BYTES`` are timed one
    after the other instead, each session closed before the next opens (two sessions of a big model hold
    its weights twice, prepacked, beside the PyTorch module the pipeline still holds)."""
    if len(paths) > 1 and sum(_weights_bytes(p) for p in paths) > JOINT_TIMING_BYTES:
        return [_time_paths([path], request)[0] for path in paths]
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(OnnxRuntimeRunner(path, request.threads)) for path in paths]
        return p50_per_plan(runners, request.plans, config=request.timing, threads=request.threads)


def _weights_bytes(path: Path) -> int:
    """The model file's size plus its one external-data file's: its weights, near enough, without
    parsing it."""
    data = path.with_name(data_file_name(path))
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
