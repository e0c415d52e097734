"""Decoders as their users feel them: time to first token and per-token decode time of our exports (float,
int8, int4 on ONNX Runtime and OpenVINO) against eager transformers with its own cache and against
Optimum's ONNX export of the same folder, for a small Llama-style decoder and one of ~125 M parameters
(``decoder_models.py``: random weights from a config, no downloads).

For each model:
  1. ``exporter export FOLDER --to onnx --to openvino --quantize int8`` and again with ``--quantize int4``
     (``--no-benchmark``: this script times everything itself), one run each; the float artifacts come from
     the int8 run. What shipped, or why a candidate was refused, is read from report.json.
  2. ``optimum-cli export onnx --model FOLDER --task text-generation-with-past`` in its own venv (its pins
     fight ours: it wants transformers < 5). Its I/O names are ours, so it runs through the same ONNX
     Runtime runner and greedy loop.
  3. Timing, all runners alike (``exporter.benchmark.latency.compare_latency``: alternated in blocks, same
     threads): a prefill at each prompt length (time to first token) and a one-token decode after each past
     length, fed the decoder contract's inputs (``exporter.hf.decoding.step_inputs``, seeded random past).
     Eager is the transformers model called as ``generate`` calls it, with a ``DynamicCache``
     (``decoder_models.EagerWithCache``); what ``generate`` itself costs per token is measured apart.
  4. Parity: greedy tokens from one prompt through every runner against transformers' ``generate``.

Optimum's venv (outside the repository; without it the Optimum column says so and the rest runs). Install
torch first: that spec takes the local CPU wheel, any other pulls a multi-GB CUDA build:

    python3 -m venv /work/optimum-venv
    /work/optimum-venv/bin/pip install torch==2.13.0
    /work/optimum-venv/bin/pip install 'optimum-onnx[onnxruntime]'

Run from the repository root with the project's virtualenv, on an otherwise idle machine. The results in
benchmarks/results/decoder.md came from (each run keeps the other tables of decoder.json):

    .venv/bin/python benchmarks/decoder.py --models small --threads 1 --out benchmarks/results
    .venv/bin/python benchmarks/decoder.py --models 125m --threads 1 --out benchmarks/results
    .venv/bin/python benchmarks/decoder.py --models 125m --threads 2 --out benchmarks/results
    .venv/bin/python benchmarks/decoder.py --models small --quick        # development (~3 min)

The exports (~3 min for small, ~5-13 min for 125m each on a busy machine) are kept in --work and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decoder_models import MODELS, build_folder
from decoder_report import markdown, table, targets
from decoder_timing import Measured, Row, measure_model
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
OPTIMUM_VENV = Path("/work/optimum-venv")
OPTIMUM_INSTALL = (
    f"python3 -m venv {OPTIMUM_VENV}; {OPTIMUM_VENV}/bin/pip install torch==2.13.0; "
    f"{OPTIMUM_VENV}/bin/pip install 'optimum-onnx[onnxruntime]'"
)


def run_export(
    folder: Path, mode: str, work: Path, threads: int, console: Console, *, openvino: bool
) -> dict[str, Any]:
    """One ``exporter export`` of ``folder`` with ``--quantize mode`` (kept: one run per mode)."""
    out = work / f"out-{folder.name}-{mode}"
    record = work / f"export-{folder.name}-{mode}.json"
    targets = ["--to", "onnx", "--to", "openvino"] if openvino else ["--to", "onnx"]
    command = [
        sys.executable, "-m", "exporter", "export", str(folder), *targets,
        "--quantize", mode, "--threads", str(threads), "--no-benchmark", "--out", str(out), "--force",
    ]  # fmt: skip
    if not record.is_file() or not (out / "report.json").is_file():
        console.print(f"[bold]{folder.name} {mode}[/] [dim]{' '.join(command[2:])}[/]")
        started = time.perf_counter()
        with (work / f"log-{folder.name}-{mode}.txt").open("w") as log:
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=log, check=False).returncode
        shown = " ".join(["exporter", *command[3:]]).replace(str(work), "WORK")
        record.write_text(
            json.dumps({"exit_code": code, "seconds": time.perf_counter() - started, "command": shown})
        )
    data: dict[str, Any] = json.loads(record.read_text())
    data["out"] = str(out)
    report = out / "report.json"
    data["quantization"] = shipped_summary(json.loads(report.read_text())) if report.is_file() else None
    return data


def shipped_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the quantize stage shipped per runtime, and why each other candidate was not."""
    quantization = report.get("quantization") or {}
    candidates = []
    for candidate in quantization.get("candidates", []):
        settings = candidate.get("settings") or {}
        generation = candidate.get("generation") or {}
        ratio = candidate.get("p50_ratio_vs_float")
        if candidate.get("error"):
            reason = f"failed: {candidate['error']}"
        elif not candidate.get("budget_passed"):
            reason = f"parity budget: {generation.get('message') or 'outputs outside the budget'}"
        elif not candidate.get("faster_than_float"):
            reason = (
                f"not faster than float per token (p50 x{ratio:.2f} of float's)" if ratio else "not faster"
            )
        else:
            reason = "within budget and faster, another candidate chosen"
        candidates.append(
            {
                "name": candidate.get("name"),
                "runtime": candidate.get("runtime"),
                "engine": candidate.get("engine"),
                "block_size": settings.get("block_size"),
                "shipped": bool(candidate.get("chosen")),
                "reason": None if candidate.get("chosen") else reason,
                "token_match": generation.get("token_match"),
                "p50_ratio_vs_float": ratio,
                "size_bytes": candidate.get("size_bytes"),
            }
        )
    notes = [n for n in report.get("notes", []) if "shipped" in n or "budget" in n or "slower" in n]
    return {"status": report.get("status"), "candidates": candidates, "notes": notes}


def run_optimum(folder: Path, work: Path, threads: int, console: Console) -> dict[str, Any]:
    """Optimum's ``text-generation-with-past`` export of ``folder`` in its venv, or why there is none."""
    cli = OPTIMUM_VENV / "bin" / "optimum-cli"
    if not cli.is_file():
        return {"ok": False, "reason": f"not installed: {OPTIMUM_INSTALL}"}
    out = work / f"optimum-{folder.name}"
    versions = subprocess.run(
        [str(OPTIMUM_VENV / "bin" / "python"), "-c", VERSIONS], capture_output=True, text=True, check=False
    ).stdout.strip()
    record = work / f"optimum-{folder.name}.json"
    if not record.is_file() or not (out / "model.onnx").is_file():
        command = [str(cli), "export", "onnx", "--model", str(folder)]
        command += ["--task", "text-generation-with-past", str(out)]
        console.print(f"[bold]{folder.name} optimum[/] [dim]{' '.join(command[1:])}[/]")
        started = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        (work / f"log-{folder.name}-optimum.txt").write_text(done.stdout + done.stderr)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        failure = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
        data: dict[str, Any] = {"exit_code": done.returncode, "seconds": time.perf_counter() - started}
        data["reason"] = None if done.returncode == 0 else failure[:300]
        record.write_text(json.dumps(data))
    data = json.loads(record.read_text())
    ok = data["exit_code"] == 0 and (out / "model.onnx").is_file()
    return {**data, "ok": ok, "model": str(out / "model.onnx") if ok else None, "versions": versions}


VERSIONS = (
    "from importlib.metadata import version as v;"
    "print(', '.join(f'{p} {v(p)}' for p in ('optimum','optimum-onnx','transformers','torch','onnxruntime')))"
)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/decoder-bench"), help="folders, exports, logs"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="shorter timing, fewer lengths (smoke runs)")
    parser.add_argument("--modes", default="int8,int4", help="the --quantize runs (int8 also gives float)")
    parser.add_argument("--no-optimum", action="store_true", help="leave Optimum out")
    parser.add_argument(
        "--onnx-only",
        default="125m",
        help="models exported with --to onnx alone; their OpenVINO IR is converted here from our model.onnx "
        "(default 125m: its --to openvino export ends in an internal error; see results/decoder.md)",
    )
    parser.add_argument("--out", type=Path, help="a folder to write decoder.json and decoder.md into")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    console = Console(width=None if sys.stdout.isatty() else 200)
    from exporter.environment import collect_environment

    environment = collect_environment(args.threads)
    console.print(
        f"{environment['cpu']} {environment['cpu_flags']}; {args.threads} threads; load {load_average()}"
    )
    results: list[Measured] = []
    for name in args.models.split(","):
        folder = args.work / name
        info = build_folder(name, folder)
        openvino = name not in args.onnx_only.split(",")
        exports = {
            mode: run_export(folder, mode, args.work, args.threads, console, openvino=openvino)
            for mode in args.modes.split(",")
        }
        optimum = (
            {"ok": False, "reason": "left out (--no-optimum)"}
            if args.no_optimum
            else run_optimum(folder, args.work, args.threads, console)
        )
        load_before = load_average()
        measured = measure_model(
            name, folder, info, exports, optimum, threads=args.threads, quick=args.quick, console=console
        )
        measured.load = {"before": load_before, "after": load_average()}
        measured.measured_at = time.strftime("%Y-%m-%d %H:%M %Z")
        results.append(measured)
        console.print(table(measured))
        if args.out:
            write(results, environment, args)
    for line in targets(results):
        console.print(line)
    return 0


def earlier(out: Path, measured: list[Measured]) -> list[Measured]:
    """The (model, threads) pairs of earlier runs in ``out/decoder.json`` that this run did not measure
    (kept, so one model or one thread count can be re-measured alone)."""
    path = out / "decoder.json"
    if not path.is_file():
        return []
    names = {(m.model, m.threads) for m in measured}
    kept = []
    for data in json.loads(path.read_text()).get("models", []):
        if (data["model"], data.get("threads", 0)) not in names:
            rows = [Row(**row) for row in data.pop("rows")]
            kept.append(Measured(**data, rows=rows))
    return kept


def write(results: list[Measured], environment: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    results = sorted(
        [*earlier(args.out, results), *results],
        key=lambda m: (list(MODELS).index(m.model) if m.model in MODELS else len(MODELS), m.threads),
    )
    payload = {
        "environment": environment,
        "threads": args.threads,
        "quick": args.quick,
        "models": [m.to_json() for m in results],
        "targets": targets(results),
    }
    (args.out / "decoder.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "decoder.md").write_text(markdown(results, environment))


if __name__ == "__main__":
    raise SystemExit(main())
