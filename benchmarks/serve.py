"""``exporter serve`` side by side with the servers people would otherwise run, under wrk.

For each model (the digits CNN and the tiny encoder, built with the real ``exporter export`` CLI into
``--work`` and reused from there unless ``--rebuild``), every server serves the same shipped model.onnx with
the same ONNX Runtime settings (``--threads`` intra-op threads in all, default 2; inter-op 1; sequential;
thread spinning off):

  ours                  python -m exporter.serving FOLDER with its defaults (one process)
  ours --workers 2      the same, two processes sharing the port and the threads (skipped with a note if
                        this checkout's server has no --workers)
  FastAPI+orjson        benchmarks/serve_peers/fastapi_minimal.py: 40 lines, no validation, no batching
  MLServer              1.7.1, a custom MLModel (its defaults: one inference worker process, no adaptive
                        batching), own venv (uvloop 0.21)
  KServe                0.21.0, a custom kserve.Model over v2 REST, own venv
  Triton (PyTriton)     nvidia-pytriton 0.7.0: an @batch Python callable behind tritonserver's dynamic
                        batcher (queue delay 0, max batch 64), own venv (numpy < 2; LD_LIBRARY_PATH)

Peer venvs live in ``WORK/venvs/PEER``, made on first use with python3.11 from
``benchmarks/serve_peers/requirements-PEER.txt``; a peer that cannot install, start or answer correctly is
a row with its reason.

Load: wrk (``/usr/bin/wrk``, keep-alive) posting one pre-built KServe v2 JSON body (batch 1, seeded random
inputs fitting the model; the same bytes for every server) at 1 and 32 connections (``--clients``), after an
untimed warm-up at the same concurrency. Before timing, each server's answer to that body must match the
in-process ONNX Runtime output (allclose). Servers run one at a time, per model: start, its points, stop.
Server CPU is the utime + stime of its whole process tree (/proc) across the timed run, per request; wrk's
CPU is reported too (it shares the cores). Rows per model call come from the server's metrics (ours:
exporter_batch_size; Triton: nv_inference_count / nv_inference_exec_count). The floor is the in-process
``session.run`` p50 with the servers' session, run with no server alive; a 1-client row's overhead is its
p50 minus the floor.

Run from the repository root with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python benchmarks/serve.py --out benchmarks/results   # ~15 min (+ peer installs the first time)
    .venv/bin/python benchmarks/serve.py --quick                     # development: 3 s points, ours + FastAPI
    .venv/bin/python benchmarks/serve.py --quick --peers ours,pytriton --models digits
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from serve_peers import wrk
from serve_peers.ort_session import open_session
from serve_peers.report import ModelInfo, Row, ServerInfo, write_outputs
from serve_peers.servers import (
    SERVERS,
    ServerKind,
    ServerProcess,
    Target,
    http,
    machine_busy_seconds,
    venv_python,
)
from serve_peers.venvs import Unavailable, package_versions

from exporter.serving.signature import DATATYPE_OF

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "digits": ROOT / "recipes" / "digits_cnn.toml",
    "tiny_encoder": ROOT / "recipes" / "tiny_encoder.toml",
}
NUMPY_OF_ORT: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
}
NUMPY_OF_ORT |= {"tensor(int32)": np.int32, "tensor(bool)": np.bool_}
DEFAULT_INT_RANGE = (0, 100)
"""Integer inputs without a declared range (none of ours): small values every vocabulary accepts."""
Log = Callable[[str], None]


def build_artifacts(name: str, work: Path, rebuild: bool, log: Log) -> tuple[Path, str]:
    """``exporter export --recipe ... --to onnx`` into ``work/name``, unless a finished folder is there."""
    folder = work / name
    if not rebuild and (folder / "manifest.json").is_file() and (folder / "model.onnx").is_file():
        return folder, "reused"
    log(f"{name}: exporting {MODELS[name].relative_to(ROOT)} to {folder}")
    command = [sys.executable, "-m", "exporter", "export", "--recipe", str(MODELS[name]), "--to", "onnx"]
    command += ["--out", str(folder), "--force", "--no-benchmark"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"exporter export failed for {name} (exit {done.returncode}):\n{done.stdout[-3000:]}"
        )
    return folder, f"built in {time.perf_counter() - started:.0f} s"


def request_inputs(manifest: dict[str, Any], declared: Sequence[Any], seed: int) -> dict[str, np.ndarray]:
    """Seeded random batch-1 inputs fitting the session's inputs (names, types) and the recipe's input
    spec (the example size of other dynamic dims, the value range the model was verified with)."""
    rng = np.random.default_rng(seed)
    spec = {entry["name"]: entry for entry in manifest["input_spec"]["inputs"]}
    dims = manifest["input_spec"]["dynamic_dims"]
    batch_dim = (manifest.get("benchmark") or {}).get("batch_dim")
    arrays = {}
    for tensor in declared:
        labels = spec[tensor.name]["shape"]
        shape = [
            1 if label == batch_dim else dims[label]["example"] if isinstance(label, str) else label
            for label in labels
        ]
        dtype = np.dtype(NUMPY_OF_ORT[tensor.type])
        value_range = spec[tensor.name].get("range")
        if dtype.kind in "iu":
            low, high = value_range or DEFAULT_INT_RANGE
            arrays[tensor.name] = rng.integers(int(low), int(high), size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[tensor.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            low, high = value_range or (0.0, 1.0)
            arrays[tensor.name] = rng.uniform(low, high, size=shape).astype(dtype)
    return arrays


def request_body(arrays: dict[str, np.ndarray]) -> bytes:
    inputs = [
        {"name": n, "shape": list(a.shape), "datatype": DATATYPE_OF[a.dtype.name], "data": a.ravel().tolist()}
        for n, a in arrays.items()
    ]
    return json.dumps({"inputs": inputs}, separators=(",", ":")).encode()


def in_process_floor(model: str, session: Any, arrays: dict[str, np.ndarray], seconds: float) -> Row:
    """``session.run`` on the request's arrays, serially, with the servers' session: the floor."""
    warm_until = time.perf_counter() + min(1.0, seconds / 4)
    while time.perf_counter() < warm_until:
        session.run(None, arrays)
    latencies = []
    started = time.perf_counter()
    while (now := time.perf_counter()) < started + seconds:
        session.run(None, arrays)
        latencies.append(time.perf_counter() - now)
    wall = time.perf_counter() - started
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return Row(
        model, "in-process ORT (floor)", "floor", 1, len(latencies), round(wall, 2),
        round(len(latencies) / wall, 1), round(float(p50), 3), round(float(p99), 3), errors=0,
    )  # fmt: skip


def answer_mismatch(answer: bytes, expected: dict[str, np.ndarray]) -> str | None:
    """Why a server's JSON answer is not the in-process output (None: every output allclose)."""
    try:
        outputs = {o["name"]: o for o in json.loads(answer)["outputs"]}
    except (ValueError, KeyError, TypeError) as error:
        return f"not a KServe v2 answer ({type(error).__name__}: {answer[:120]!r})"
    for name, want in expected.items():
        if name not in outputs:
            return f"output {name!r} missing (got {sorted(outputs)})"
        got = np.asarray(outputs[name]["data"], dtype=np.float64).reshape(outputs[name]["shape"])
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return f"output {name!r} differs from in-process ORT (shape {list(got.shape)})"
    return None


def workers_flag_missing() -> str | None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter.serving", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return None if "--workers" in done.stdout else "this checkout's exporter.serving has no --workers"


@dataclass
class Job:
    """One model's measurements: what every server serves and is sent, and the answer it must give."""

    model: str
    target: Target
    body: bytes
    expected: dict[str, np.ndarray]
    args: argparse.Namespace
    log: Log


def measure_server(kind: ServerKind, job: Job) -> tuple[list[Row], ServerInfo]:
    """Start ``kind`` on the target, check its answer, run every --clients point, stop it."""
    model, args, log = job.model, job.args, job.log
    info = ServerInfo(model, kind.key, kind.label)
    skipped = workers_flag_missing() if kind.key == "ours-w2" else None
    try:
        if skipped:
            raise Unavailable(skipped)
        python = venv_python(kind, args.work, log)
        info.versions = args.versions.setdefault(kind.key, package_versions(python, kind.packages))
        launch = kind.launch(job.target, python)
    except Unavailable as reason:
        log(f"{model}: {kind.label}: not measured: {reason}")
        return [Row(model, kind.label, kind.key, note=str(reason))], info
    info.settings = launch.settings
    log_path = job.target.run_dir / f"{kind.key}.log"
    infer_url = f"{launch.url}/v2/models/{job.target.served_name}/infer"
    log(f"{model}: starting {kind.label} (log {log_path})")
    server = ServerProcess(launch, log_path)
    rows: list[Row] = []
    try:
        answer = server.wait_answer(infer_url, job.body, timeout=args.start_timeout)
        if mismatch := answer_mismatch(answer, job.expected):
            raise Unavailable(mismatch)
        info.response_bytes = len(answer)
        info.start_line = server.log_line("exporter serve:") or None
        status, metadata = http(f"{launch.url}/v2")
        info.server_metadata = json.loads(metadata) if status == 200 else None
        for clients in args.clients:
            log(f"{model}: {kind.label}: {clients} connection(s), {args.warmup:g} + {args.seconds:g} s")
            rows.append(measure_point(server, Row(model, kind.label, kind.key, clients), infer_url, job))
    except (Unavailable, RuntimeError) as reason:
        log(f"{model}: {kind.label}: {reason}")
        rows.append(Row(model, kind.label, kind.key, note=str(reason)))
    finally:
        info.exit_code = server.stop()
        info.stopped = server.stopped
    return rows, info


def measure_point(server: ServerProcess, row: Row, url: str, job: Job) -> Row:
    """wrk's warm-up, then its timed run at ``row.clients`` connections, with the server's CPU and counters
    read on either side of the timed run."""
    args, clients = job.args, row.clients or 1
    script = job.target.run_dir / "request.lua"
    wrk.run(url, script, clients, args.wrk_threads, args.warmup)
    counters = server.launch.counters
    counts_before = counters() if counters else None
    cpu_before, machine_before = server.cpu_seconds(), machine_busy_seconds()
    result = wrk.run(url, script, clients, args.wrk_threads, args.seconds)
    cpu, machine = server.cpu_seconds() - cpu_before, machine_busy_seconds() - machine_before
    counts_after = counters() if counters else None
    wall = result.seconds or float("nan")
    row.requests, row.seconds = result.requests, round(result.seconds, 2)
    row.requests_per_s, row.errors = round(result.requests_per_s, 1), result.errors
    row.p50_ms, row.p99_ms = round(result.p50_ms, 3), round(result.p99_ms, 3)
    row.mean_ms, row.max_ms = round(result.mean_ms, 3), round(result.max_ms, 3)
    row.status_errors, row.socket_errors = result.status_errors, result.socket_errors
    row.server_cpu = round(cpu / wall, 2)
    row.server_cpu_ms_per_request = round(1000 * cpu / result.requests, 3) if result.requests else None
    row.wrk_cpu = round(result.cpu_s / wall, 2)
    row.other_cpu = round(max(machine - cpu - result.cpu_s, 0.0) / wall, 2)
    row.wrk_threads = result.threads
    if counts_before and counts_after and counts_after[1] > counts_before[1]:
        rows, calls = (after - before for after, before in zip(counts_after, counts_before, strict=True))
        row.rows_per_call = round(rows / calls, 2)
    if server.process.poll() is not None:
        row.note = f"the server exited with {server.process.returncode} during the run"
    return row


def run_model(name: str, args: argparse.Namespace, log: Log) -> tuple[ModelInfo, list[Row], list[ServerInfo]]:
    folder, build = build_artifacts(name, args.work, args.rebuild, log)
    manifest = json.loads((folder / "manifest.json").read_text())
    run_dir = args.work / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    session = open_session(str(folder / "model.onnx"), args.threads)
    arrays = request_inputs(manifest, session.get_inputs(), seed=0)
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, arrays), strict=True))
    body = request_body(arrays)
    wrk.write_script(run_dir, body, "request")
    log(f"{name}: in-process ONNX Runtime for {args.baseline_seconds:g} s (the floor)")
    floor = in_process_floor(name, session, arrays, args.baseline_seconds)
    del session
    info = ModelInfo(name, manifest["name"], str(folder), {k: list(a.shape) for k, a in arrays.items()})
    info.request_bytes, info.build = len(body), build
    target = Target(manifest["name"], folder, args.threads, args.triton_max_batch, run_dir)
    job = Job(name, target, body, expected, args, log)
    rows, servers = [floor], []
    for key in args.server_keys:
        server_rows, server_info = measure_server(SERVERS[key], job)
        for row in server_rows:
            if row.clients == 1 and row.p50_ms is not None:
                row.overhead_p50_ms = round(row.p50_ms - (floor.p50_ms or 0.0), 3)
        rows += server_rows
        servers.append(server_info)
    return info, rows, servers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument(
        "--peers", help=f"comma-separated servers (default all; quick: ours,fastapi): {', '.join(SERVERS)}"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/serve-bench"), help="artifacts, venvs, logs")
    parser.add_argument("--rebuild", action="store_true", help="export again even if the folders exist")
    parser.add_argument("--seconds", type=float, help="timed seconds per point (default 20, quick 3)")
    parser.add_argument("--warmup", type=float, help="untimed seconds before each point (default 3, quick 1)")
    parser.add_argument("--clients", help="comma-separated connection counts (default 1,32; quick 1,8)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads per server, in all")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (at most the connections)")
    parser.add_argument("--triton-max-batch", type=int, default=64, help="PyTriton's max_batch_size")
    parser.add_argument("--baseline-seconds", type=float, help="in-process loop seconds (default 5, quick 2)")
    parser.add_argument(
        "--start-timeout", type=float, default=180.0, help="seconds for a server's 1st answer"
    )
    parser.add_argument("--quick", action="store_true", help="3 s points, 8 clients, ours + FastAPI")
    parser.add_argument("--note", help="a line for the header (e.g. that the machine was shared)")
    parser.add_argument("--out", type=Path, help="a folder to write serve.json and serve.md into")
    args = parser.parse_args(argv)
    args.model_names = [n.strip() for n in args.models.split(",") if n.strip()]
    if unknown := [n for n in args.model_names if n not in MODELS]:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    args.server_keys = [
        n.strip() for n in (args.peers or ("ours,fastapi" if args.quick else ",".join(SERVERS))).split(",")
    ]
    if unknown := [n for n in args.server_keys if n not in SERVERS]:
        parser.error(f"unknown server(s): {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    try:
        args.clients = [int(c) for c in (args.clients or ("1,8" if args.quick else "1,32")).split(",")]
    except ValueError:
        parser.error("--clients takes comma-separated integers")
    if any(c < 1 for c in args.clients) or args.threads < 1:
        parser.error("--clients and --threads must be at least 1")
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.baseline_seconds = args.baseline_seconds or (2.0 if args.quick else 5.0)
    args.work = args.work.resolve()
    args.versions = {}
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if missing := wrk.available():
        print(f"error: {missing}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    models, rows, servers = [], [], []
    for name in args.model_names:
        model, model_rows, model_servers = run_model(name, args, log)
        models.append(model)
        rows += model_rows
        servers += model_servers
    total = time.perf_counter() - started
    write_outputs(args, models=models, rows=rows, servers=servers, load_start=load_start, total_s=total)
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
