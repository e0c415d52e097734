"""Int8 quantization benchmark: every int8 candidate next to float, for a CNN and a transformer encoder.

For a ResNet-18 (``image:float32:batch=1,3,224,224``) and a 6-layer BERT-like encoder (``input_ids`` and
``attention_mask``, ``batch=1,seq=128``), both with seeded random weights from ``benchmarks/models.py``, it
runs the export pipeline with ``--quantize int8`` (synthetic calibration) and prints, per model, one table:
eager PyTorch, float ONNX Runtime and each int8 candidate (dynamic-ort, static-ort, static-pt2e,
qat-pt2e) with p50 latency at batch 1 and 8, the geometric-mean p50 ratio vs float ONNX Runtime, file size,
parity vs float eager (min cosine, SQNR, top-1 agreement), whether it met the budget (cosine >= 0.99), which
one shipped, and why a candidate failed. Numbers are measurements, not assertions.

Run from the repository root (several minutes on 2 cores; nothing else heavy should run meanwhile):

    .venv/bin/python benchmarks/int8.py
    .venv/bin/python benchmarks/int8.py --models resnet18 --threads 1 --json /tmp/int8.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

import torch
from rich.console import Console, JustifyMethod
from rich.table import Table

from exporter.benchmark.latency import LatencyStats, TimingConfig
from exporter.environment import collect_environment
from exporter.pipeline import ExportOptions, ExportResult, StageRecord, export
from exporter.quantize.search import Candidate, QuantizationResult
from exporter.quantize.types import QuantizeOptions, QuantMode
from exporter.specs.inputs import DynamicDim, InputSpec, parse_tensor_spec

HERE = Path(__file__).resolve().parent
MODELS_FILE = HERE / "models.py"
BATCH_SIZES = (1, 8)
TIMING = TimingConfig(warmup=3, min_runs=10, min_seconds=1.0, max_runs=200, max_seconds=8.0)
EXTRA_PACKAGES = ("torchao", "transformers", "rich")


@dataclass(frozen=True)
class Benchmark:
    name: str
    factory: str
    inputs: tuple[str, ...]
    dims: tuple[DynamicDim, ...] = ()


BENCHMARKS = {
    "resnet18": Benchmark("resnet18", "build_resnet18", ("image:float32:batch=1,3,224,224",)),
    "bert": Benchmark(
        "bert",
        "build_bert_encoder",
        ("input_ids:int64:batch=1,seq=128:0..30522", "attention_mask:int64:batch=1,seq=128:1..2"),
        (DynamicDim("seq", 1, 512),),  # the position embeddings end at 512; torch.export (PT2E) insists
    ),
}


@dataclass
class Row:
    """One line of a model's table; ``None`` is shown as ``-``."""

    name: str
    p50_ms: dict[int, float]
    ratio: float | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    min_cosine: float | None = None
    sqnr_db: float | None = None
    top1: float | None = None
    budget: str | None = None
    shipped: bool = False
    error: str | None = None


class StageLog:
    """Prints each stage and step with the elapsed time, so a log being polled shows where the run is."""

    def __init__(self, console: Console, model: str) -> None:
        self.console = console
        self.model = model
        self.started = time.perf_counter()
        self.last_step = ""

    def _say(self, text: str) -> None:
        self.console.print(f"[dim][{time.perf_counter() - self.started:7.1f}s] {self.model}: {text}[/dim]")

    def stage_started(self, stage: str) -> None:
        self._say(f"{stage} ...")

    def stage_finished(self, record: StageRecord) -> None:
        self._say(f"{record.name} {record.status.value} in {record.seconds:.1f}s {record.detail}".rstrip())

    def step(self, message: str, done: int, total: int) -> None:
        if message != self.last_step:
            self.last_step = message
            self._say(f"  {message}")


def load_factory(name: str) -> Callable[..., torch.nn.Module]:
    spec = spec_from_file_location("_int8_benchmark_models", MODELS_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {MODELS_FILE}")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def by_batch(stats: Sequence[LatencyStats]) -> dict[int, float]:
    return {s.batch: s.p50_ms for s in stats if s.batch is not None}


def geomean_ratio(p50: dict[int, float], baseline: dict[int, float]) -> float | None:
    ratios = [p50[b] / baseline[b] for b in p50 if b in baseline and baseline[b] > 0]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None


def candidate_row(candidate: Candidate, float_size: int) -> Row:
    outputs = candidate.outputs
    if candidate.error is not None:
        budget = None
    elif candidate.budget_passed:
        budget = "yes"
    else:
        budget = "no"
    if candidate.float_layers and budget is not None:
        budget += (
            f" ({len(candidate.float_layers)} float layer{'s' if len(candidate.float_layers) > 1 else ''})"
        )
    error = candidate.error
    if error is None and candidate.shape_errors:
        error = "shape cases: " + "; ".join(candidate.shape_errors)
    if error is None and outputs and not candidate.budget_passed:
        error = "; ".join(o.message for o in outputs if o.message) or None
    top1 = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
    return Row(
        name=candidate.name,
        p50_ms=by_batch(candidate.latency),
        ratio=candidate.p50_ratio,
        size_bytes=candidate.size_bytes or None,
        size_ratio=candidate.size_bytes / float_size if candidate.size_bytes and float_size else None,
        min_cosine=min(o.min_cosine for o in outputs) if outputs else None,
        sqnr_db=min(o.sqnr_db for o in outputs) if outputs else None,
        top1=min(top1) if top1 else None,
        budget=budget,
        shipped=candidate.chosen,
        error=error,
    )


def rows_for(result: ExportResult) -> list[Row]:
    eager = by_batch([s for s in result.latency if s.backend == "pytorch-eager"])
    quantization: QuantizationResult | None = result.quantization
    if quantization is None:
        float_ort = by_batch([s for s in result.latency if s.backend == "onnxruntime"])
        return [
            Row("eager PyTorch", eager, geomean_ratio(eager, float_ort)),
            Row("float ONNX Runtime", float_ort, 1.0, error="quantize stage did not run"),
        ]
    float_ort = by_batch(quantization.float_latency)
    rows = [
        Row("eager PyTorch", eager, geomean_ratio(eager, float_ort)),
        Row("float ONNX Runtime", float_ort, 1.0, quantization.float_size, 1.0),
    ]
    rows += [candidate_row(c, quantization.float_size) for c in quantization.candidates]
    return rows


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def render_table(title: str, rows: Sequence[Row]) -> Table:
    table = Table(title=title, title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("backend", "left"),
        ("p50 ms b=1", "right"),
        ("p50 ms b=8", "right"),
        ("vs float ORT", "right"),
        ("size MB", "right"),
        ("size ratio", "right"),
        ("min cosine", "right"),
        ("SQNR dB", "right"),
        ("top-1", "right"),
        ("within budget", "left"),
        ("shipped", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=True)
    table.add_column("error", overflow="fold")
    for row in rows:
        table.add_row(
            row.name,
            *(_number(row.p50_ms.get(batch), 2) for batch in BATCH_SIZES),
            f"x{row.ratio:.2f}" if row.ratio is not None else "-",
            _number(row.size_bytes / 1e6 if row.size_bytes else None, 1),
            f"x{row.size_ratio:.2f}" if row.size_ratio is not None else "-",
            _number(row.min_cosine, 4),
            _number(row.sqnr_db, 1),
            _number(row.top1, 3),
            row.budget or "-",
            "yes" if row.shipped else "",
            row.error or "",
        )
    return table


def run_model(
    benchmark: Benchmark, args: argparse.Namespace, threads: int, console: Console
) -> tuple[ExportResult | None, float, str | None]:
    """Export one model with ``--quantize int8``; returns the result (None on failure), seconds, error."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"int8-{benchmark.name}-") as scratch:
        checkpoint = Path(scratch) / f"{benchmark.name}.pt"
        torch.save(load_factory(benchmark.factory)().state_dict(), checkpoint)
        options = ExportOptions(
            checkpoint=checkpoint,
            name=benchmark.name,
            model_ref=f"{MODELS_FILE}:{benchmark.factory}",
            spec=InputSpec(tuple(parse_tensor_spec(text) for text in benchmark.inputs), benchmark.dims),
            out=Path(scratch) / "out",
            batch_sizes=BATCH_SIZES,
            threads=threads,
            quantization=QuantizeOptions(mode=QuantMode.INT8, samples=args.samples, qat_steps=args.qat_steps),
            timing=TIMING,
        )
        try:
            result = export(options, StageLog(console, benchmark.name))
        except Exception as error:
            console.print(traceback.format_exc(), markup=False, highlight=False)
            return None, time.perf_counter() - started, f"{type(error).__name__}: {error}"
    return result, time.perf_counter() - started, None


def machine_line(environment: dict[str, Any]) -> str:
    versions = {**environment["packages"], **{p: _version(p) for p in EXTRA_PACKAGES}}
    packages = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    return (
        f"{environment['cpu']} ({', '.join(environment['cpu_flags']) or 'no listed SIMD flags'}), "
        f"{environment['threads']} threads of {environment['usable_cpus']} usable CPUs; "
        f"python {environment['python']}, {packages}"
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet18,bert", help="comma-separated: resnet18, bert")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all CPUs)")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--qat-steps", type=int, default=20, help="QAT distillation steps")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    threads = args.threads or len(os.sched_getaffinity(0)) or 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(width=None if sys.stdout.isatty() else 240)
    environment = collect_environment(threads)
    console.print(machine_line(environment))

    started = time.perf_counter()
    report: dict[str, Any] = {
        "environment": environment | {"extra_packages": {p: _version(p) for p in EXTRA_PACKAGES}},
        "settings": {
            "threads": threads,
            "samples": args.samples,
            "qat_steps": args.qat_steps,
            "batch_sizes": list(BATCH_SIZES),
            "timing": vars(TIMING),
        },
        "models": {},
    }
    tables: list[Table | str] = []
    for name in names:
        benchmark = BENCHMARKS[name]
        result, seconds, error = run_model(benchmark, args, threads, console)
        entry: dict[str, Any] = {"inputs": list(benchmark.inputs), "seconds": round(seconds, 1)}
        if result is None:
            entry["error"] = error
            tables.append(f"[bold red]{name}: export failed after {seconds:.0f}s[/]: {error}")
        else:
            rows = rows_for(result)
            entry |= {
                "status": result.report["status"],
                "stages": result.report["stages"],
                "rows": [vars(r) for r in rows],
                "latency": [s.to_json() for s in result.latency],
                "quantization": result.quantization.to_json() if result.quantization else None,
                "notes": result.report["notes"],
            }
            title = (
                f"{name}: {' '.join(benchmark.inputs)}  ({result.loaded.parameter_count:,} parameters, "
                f"{seconds:.0f}s, export {result.report['status']})"
            )
            tables.append(render_table(title, rows))
            tables.extend(f"  note: {note}" for note in result.report["notes"])
        report["models"][name] = entry

    total = time.perf_counter() - started
    report["total_seconds"] = round(total, 1)
    console.print()
    console.print(machine_line(environment))
    for item in tables:
        if isinstance(item, str):
            console.print(item, highlight=False)
        else:
            console.print(item)
    console.print(f"total {total:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"numbers written to {args.json}")
    return 1 if any("error" in m for m in report["models"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
