"""Big models on one box: wall time per stage, peak memory and artifact sizes of ``exporter export`` from
25M to ~1.5B parameters.

For each size (``scale_models.py``: transformer encoders with distinct layers, seeded random weights,
saved as a state_dict once into ``--work``) and each mode:

  onnx        exporter export CKPT --to onnx                      (default optimize steps)
  int8        exporter export CKPT --to onnx --quantize int8
  openvino    exporter export CKPT --to openvino

the real CLI runs in a subprocess while this script samples the resident memory (RSS) of its whole process
tree every 0.1 s; then ``exporter verify`` replays the artifacts folder under the same sampler. Reported:
exit code, wall time, peak RSS of the tree and its ratio to the float32 weights (the issue's targets: at
most 3x for float, 4x with int8), each stage's time and peak RSS (report.json), the artifacts' sizes.
"fixed" is what the process holds besides the model (the load stage's peak minus the weights: torch, ONNX
Runtime, onnx and OpenVINO loaded, about 0.3-1 GiB), which dominates the ratio of small models; "x weights
beyond fixed" sets it aside.
Sizes run one after another, small first; a size whose checkpoint cannot be built (memory) is a row with
its reason.

Run from the repository root with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python benchmarks/scale.py --out benchmarks/results             # every size (~1 h)
    .venv/bin/python benchmarks/scale.py --sizes 25m,250m --modes onnx        # development
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table
from scale_models import SIZES, input_spec

ROOT = Path(__file__).resolve().parents[1]
MODES: dict[str, list[str]] = {
    "onnx": ["--to", "onnx"],
    "int8": ["--to", "onnx", "--quantize", "int8"],
    "openvino": ["--to", "openvino"],
    "torchscript": ["--to", "torchscript"],
    "compile": ["--to", "compile"],
}
DEFAULT_MODES = ("onnx", "int8", "openvino")
"""The issue's three; ``torchscript`` and ``compile`` calibrate the memory estimate's factors for them."""
GIB = 2**30


@dataclass
class Run:
    """One command under the sampler."""

    exit_code: int
    seconds: float
    peak_bytes: int
    last_line: str = ""


@dataclass
class Row:
    size: str
    parameters: int
    weights_bytes: int
    mode: str
    export: Run | None = None
    verify: Run | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.export.peak_bytes / self.weights_bytes if self.export and self.weights_bytes else None

    @property
    def fixed_bytes(self) -> int | None:
        """What the process holds besides the model: the load stage's peak (imports, plus the weights,
        which the golden cases' forward passes touch) minus the weights."""
        load = next((s.get("peak_rss_mb") for s in self.stages if s.get("name") == "load"), None)
        return int(load * 2**20) - self.weights_bytes if load else None

    @property
    def ratio_beyond_fixed(self) -> float | None:
        """Peak over the weights once the fixed cost is set aside: what grows with the model."""
        fixed = self.fixed_bytes
        if self.export is None or fixed is None or not self.weights_bytes:
            return None
        return (self.export.peak_bytes - fixed) / self.weights_bytes


def tree_rss(process: psutil.Process) -> int:
    """RSS of a process and all its descendants (pages shared between them counted in each)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def sampled(command: Sequence[str], log: Path) -> Run:
    """Run ``command`` (output to ``log``) while sampling its tree's RSS every 0.1 s."""
    started = time.perf_counter()
    with log.open("w") as sink:
        child = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        process = psutil.Process(child.pid)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(process))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        done.set()
        sampler.join()
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if line.startswith("error")), lines[-1] if lines else "")
    return Run(code, time.perf_counter() - started, peak, last[:300])


def checkpoint(size: str, work: Path, console: Console) -> tuple[Path, int, int]:
    """The size's state_dict (built in a subprocess, so its memory is gone before the export runs)."""
    path = work / f"encoder-{size}.pt"
    info = work / f"encoder-{size}.json"
    if not path.exists() or not info.exists():
        console.print(f"[dim]building the {size} checkpoint[/]")
        script = (
            "import json, sys, torch; sys.path.insert(0, 'benchmarks');"
            "from scale_models import build_encoder;"
            f"m = build_encoder({size!r}); n = sum(p.numel() for p in m.parameters());"
            f"torch.save(m.state_dict(), {str(path)!r});"
            f"open({str(info)!r}, 'w').write(json.dumps({{'parameters': n, 'weights_bytes': 4 * n}}))"
        )
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
    data = json.loads(info.read_text())
    return path, data["parameters"], data["weights_bytes"]


def artifact_sizes(folder: Path) -> dict[str, int]:
    """Bytes per model file in the artifacts folder (a model and its ``.data`` / ``.bin`` counted apart)."""
    if not folder.is_dir():
        return {}
    suffixes = (".onnx", ".data", ".xml", ".bin", ".ts", ".pt2")
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name.endswith(suffixes)}


def measure(size: str, mode: str, args: argparse.Namespace, console: Console) -> Row:
    work: Path = args.work
    ckpt, parameters, weights = checkpoint(size, work, console)
    row = Row(size, parameters, weights, mode)
    out = work / f"out-{size}-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "exporter", "export", str(ckpt),
        "--model", "benchmarks/scale_models.py:build_encoder", "--model-kwargs", json.dumps({"size": size}),
        "--input", input_spec(size), *MODES[mode], "--threads", str(args.threads),
        "--out", str(out), "--force", *args.extra,
    ]  # fmt: skip
    console.print(f"[bold]{size} {mode}[/] [dim]{' '.join(command[2:])}[/]")
    row.export = sampled(command, work / f"log-{size}-{mode}.txt")
    report = out / "report.json"
    if report.is_file():
        row.stages = json.loads(report.read_text()).get("stages", [])
        row.artifacts = artifact_sizes(out)
        row.verify = sampled(
            [sys.executable, "-m", "exporter", "verify", str(out), "--threads", str(args.threads)],
            work / f"log-{size}-{mode}-verify.txt",
        )
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def stage_cell(stages: list[dict[str, Any]]) -> str:
    parts = []
    for stage in stages:
        if stage.get("status") in ("passed", "failed"):
            peak = stage.get("peak_rss_mb")
            memory = f" {peak / 1024:.1f}G" if peak else ""
            parts.append(f"{stage['name']} {stage['seconds']:.0f}s{memory}")
    return ", ".join(parts)


COLUMNS = (
    "size", "params", "fp32 weights", "mode", "exit", "wall", "peak RSS (tree)", "x weights",
    "fixed", "x weights beyond fixed",
    "stages: time, peak RSS", "verify: exit, wall, peak", "artifacts",
)  # fmt: skip


def cells(row: Row) -> list[str]:
    """One row's cells, in ``COLUMNS`` order."""
    run, verify = row.export, row.verify
    checked = (
        f"{verify.exit_code}, {verify.seconds:.0f} s, {verify.peak_bytes / GIB:.2f} GiB" if verify else "-"
    )
    sizes = ", ".join(f"{n} {b / GIB:.2f} GiB" for n, b in row.artifacts.items() if b > 2**20)
    return [
        row.size,
        f"{row.parameters / 1e6:,.0f} M",
        f"{row.weights_bytes / GIB:.2f} GiB",
        row.mode,
        str(run.exit_code) if run else "-",
        f"{run.seconds:.0f} s" if run else "-",
        f"{run.peak_bytes / GIB:.2f} GiB" if run else "-",
        f"{row.ratio:.2f}" if row.ratio else "-",
        f"{row.fixed_bytes / GIB:.2f} GiB" if row.fixed_bytes is not None else "-",
        f"{row.ratio_beyond_fixed:.2f}" if row.ratio_beyond_fixed else "-",
        stage_cell(row.stages) or (run.last_line if run else row.note),
        checked,
        sizes,
    ]


def table(rows: list[Row]) -> Table:
    out = Table(title="exporter export at scale: peak RSS of the process tree / float32 weights")
    for column in COLUMNS:
        out.add_column(column, justify="left" if column in ("size", "mode") or ":" in column else "right")
    for row in rows:
        out.add_row(*cells(row))
    return out


def markdown(rows: list[Row], header: str) -> str:
    lines = ["# exporter export at scale", "", header, "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def environment_line(threads: int) -> str:
    import platform

    import onnxruntime
    import openvino
    import torch

    memory = psutil.virtual_memory()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f" {f}" in flags]
    return (
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores ({', '.join(wanted)}), "
        f"{memory.total / GIB:.1f} GiB RAM; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}; {threads} threads; "
        "input x:float32:batch=1..2,seq=4..16,d_model"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated: {', '.join(SIZES)}")
    parser.add_argument(
        "--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated: {', '.join(MODES)}"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/scale-bench"), help="checkpoints, outputs, logs"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the artifacts folders (they are big)")
    parser.add_argument("--out", type=Path, help="a folder to write scale.json and scale.md into")
    parser.add_argument("extra", nargs="*", help="more flags for exporter export (after --)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    console = Console(width=None if sys.stdout.isatty() else 240)
    header = environment_line(args.threads)
    console.print(header)
    rows: list[Row] = []
    for size in args.sizes.split(","):
        for mode in args.modes.split(","):
            rows.append(measure(size, mode, args, console))
            console.print(table(rows[-1:]))
            if args.out:
                write(rows, header, args.out)
    console.print(table(rows))
    return 0


def write(rows: list[Row], header: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": header,
        "rows": [
            {
                **asdict(row),
                "ratio": row.ratio,
                "fixed_bytes": row.fixed_bytes,
                "beyond": row.ratio_beyond_fixed,
            }
            for row in rows
        ],
    }
    (out / "scale.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "scale.md").write_text(markdown(rows, header))


if __name__ == "__main__":
    raise SystemExit(main())
