"""The model server under load: requests/s, p50/p99 latency and errors of ``python -m exporter.serving``
with dynamic batching off and on, against calling the same ONNX Runtime session in process.

For each model (the digits CNN and the tiny encoder, built with the real ``exporter export`` CLI into
``--work`` and reused from there unless ``--rebuild``):

  in-process ORT        an onnxruntime.InferenceSession of the shipped model.onnx with the server's session
                        options and threads, called serially with one batch-1 input (p50 and calls/s),
                        with ONNX Runtime's default thread spinning (the server turns it off)
  server, 1 client      batching off (--max-batch-size 1), one client sending requests back to back: the
                        pure per-request cost of HTTP + JSON + validation on top of the model call
  server, off           batching off, --clients concurrent clients (32), batch-1 requests back to back
  server, on            the server's default dynamic batching (up to 64 rows within 2 ms), same load

The load generator is asyncio + httpx (one AsyncClient with a connection per client) in this process; each
client sends one request body, built once from seeded random inputs that fit the model's metadata (batch 1,
other dynamic dims at the recipe's example size, integers within the recipe's range), until the timed
window closes. A warm-up before the window is excluded. Latency is measured per request around the
``POST``; requests/s counts responses that completed inside the window. Errors are non-200 responses and
exceptions (they must be 0). The server's rows per model call and time per model call come from its
``/metrics`` (``exporter_batch_size``, ``exporter_model_call_seconds``), as differences across the window.
Overhead is the server row's p50 minus the in-process p50. CPU columns are the server's and this process's
CPU seconds per wall second over the window: the client shares the machine's cores with the server.

Run from the repository root with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python benchmarks/serve.py --out benchmarks/results    # ~4 min plus the builds
    .venv/bin/python benchmarks/serve.py --quick                      # development: 5 s, 8 clients
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from exporter.environment import collect_environment
from exporter.runners.onnxruntime import onnxruntime_session
from exporter.serving.protocol import DATATYPE_OF

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MODELS = {
    "digits": ROOT / "recipes" / "digits_cnn.toml",
    "tiny_encoder": ROOT / "recipes" / "tiny_encoder.toml",
}
NUMPY_OF = {kserve: np.dtype(name) for name, kserve in DATATYPE_OF.items()}
VERSIONS = ("onnxruntime", "uvicorn", "fastapi", "starlette", "httpx", "uvloop", "httptools", "numpy")
DEFAULT_INT_RANGE = (0, 100)
"""Integer inputs without a declared range (none of ours): small values every vocabulary accepts."""


@dataclass
class Row:
    model: str
    path: str
    """``in-process``, ``batching off``, ``batching on`` or ``GET /v2/health/live`` (no model)."""
    clients: int
    seconds: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    overhead_p50_ms: float | None = None
    """This row's p50 minus the in-process p50 (server rows)."""
    rows_per_call: float | None = None
    """The server's mean rows per model call over the window (sum / count of exporter_batch_size)."""
    model_call_ms: float | None = None
    """The server's mean time per model call over the window (exporter_model_call_seconds)."""
    server_request_ms: float | None = None
    """The server's mean time per request in its handler, body read to response built
    (exporter_request_seconds): the rest of a client's latency is HTTP, queues and the client itself."""
    server_cpu: float | None = None
    """Server CPU seconds per wall second over the window (2.0 = both cores)."""
    server_cpu_ms_per_request: float | None = None
    """Server CPU time per answered request: its cost whether or not the client could keep it busy."""
    client_cpu: float | None = None
    """This process's CPU seconds per wall second (the load generator, or the in-process loop)."""
    other_cpu: float | None = None
    """Every other process's CPU seconds per wall second: near 0 when the machine was otherwise idle."""
    steal_cpu: float | None = None
    """CPU seconds per wall second the hypervisor gave to other guests (``steal`` in /proc/stat)."""
    first_error: str | None = None


@dataclass
class ModelInfo:
    name: str
    folder: str
    served_name: str
    inputs: dict[str, list[int]]
    """Input name -> the shape of every request's tensor."""
    request_bytes: int
    response_bytes: int
    build: str
    """``built in N s`` or ``reused``."""
    server_settings: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- artifacts


def build_artifacts(name: str, work: Path, rebuild: bool, log: Any) -> tuple[Path, str]:
    """``exporter export --recipe ... --to onnx`` into ``work/name``, unless a finished folder is there."""
    folder = work / name
    if not rebuild and (folder / "manifest.json").is_file() and (folder / "model.onnx").is_file():
        return folder, "reused"
    log(f"{name}: exporting {MODELS[name].relative_to(ROOT)} to {folder}")
    command = [PYTHON, "-m", "exporter", "export", "--recipe", str(MODELS[name]), "--to", "onnx"]
    command += ["--out", str(folder), "--force", "--no-benchmark"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"exporter export failed for {name} (exit {done.returncode}):\n{done.stdout[-3000:]}"
        )
    return folder, f"built in {time.perf_counter() - started:.0f} s"


def request_inputs(
    manifest: dict[str, Any], model_metadata: dict[str, Any], seed: int
) -> dict[str, np.ndarray]:
    """Seeded random batch-1 inputs fitting the server's metadata (names, datatypes) and the recipe's input
    spec (the example size of other dynamic dims, the value range the model was verified with)."""
    rng = np.random.default_rng(seed)
    spec = {entry["name"]: entry for entry in manifest["input_spec"]["inputs"]}
    dims = manifest["input_spec"]["dynamic_dims"]
    batch_dim = (manifest.get("benchmark") or {}).get("batch_dim")
    arrays = {}
    for tensor in model_metadata["inputs"]:
        labels = spec[tensor["name"]]["shape"]
        shape = [
            1 if label == batch_dim else dims[label]["example"] if isinstance(label, str) else label
            for label in labels
        ]
        dtype = NUMPY_OF[tensor["datatype"]]
        value_range = spec[tensor["name"]].get("range")
        if dtype.kind in "iu":
            low, high = value_range or DEFAULT_INT_RANGE
            arrays[tensor["name"]] = rng.integers(int(low), int(high), size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[tensor["name"]] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            low, high = value_range or (0.0, 1.0)
            arrays[tensor["name"]] = rng.uniform(low, high, size=shape).astype(dtype)
    return arrays


def request_body(arrays: dict[str, np.ndarray]) -> bytes:
    inputs = [
        {
            "name": name,
            "shape": list(a.shape),
            "datatype": DATATYPE_OF[a.dtype.name],
            "data": a.reshape(-1).tolist(),
        }
        for name, a in arrays.items()
    ]
    return json.dumps({"inputs": inputs}, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------------ in process


def in_process(model: str, folder: Path, arrays: dict[str, np.ndarray], threads: int, seconds: float) -> Row:
    """The model.onnx session the server opens (``exporter.serving.runtimes.onnxruntime_session``: same
    threads and options) but with ONNX Runtime's default thread spinning, the fastest way to call it
    serially in process, called with the request's arrays."""
    session = onnxruntime_session(folder / "model.onnx", threads, spinning=True)
    warm_until = time.perf_counter() + min(1.0, seconds / 4)
    while time.perf_counter() < warm_until:
        session.run(None, arrays)
    latencies = []
    machine_started, cpu_started, started = machine_seconds(), time.process_time(), time.perf_counter()
    stop = started + seconds
    while (now := time.perf_counter()) < stop:
        session.run(None, arrays)
        latencies.append(time.perf_counter() - now)
    wall = time.perf_counter() - started
    ours = time.process_time() - cpu_started
    machine = machine_seconds()
    others = machine[0] - machine_started[0] - ours
    steal = machine[1] - machine_started[1]
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return Row(
        model,
        "in-process",
        1,
        round(wall, 2),
        len(latencies),
        round(len(latencies) / wall, 1),
        round(float(p50), 3),
        round(float(p99), 3),
        0,
        client_cpu=round(ours / wall, 2),
        other_cpu=round(max(others, 0.0) / wall, 2),
        steal_cpu=round(steal / wall, 2),
    )


def machine_seconds() -> tuple[float, float]:
    """CPU time every process on the machine has used (user, nice, system, irq, softirq), and the time the
    hypervisor gave this VM's CPUs to someone else (steal), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


# -------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """``python -m exporter.serving`` as a subprocess: started, waited on until ready, drained by SIGTERM."""

    def __init__(
        self, folder: Path, threads: int, batch_delay_ms: float, batching: bool, log_path: Path
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [PYTHON, "-m", "exporter.serving", str(folder), "--backend", "onnxruntime"]
        command += [
            "--port",
            str(self.port),
            "--threads",
            str(threads),
            "--max-batch-delay-ms",
            str(batch_delay_ms),
        ]
        if not batching:
            command += ["--max-batch-size", "1"]
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise SystemExit(f"the server was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def get(self, path: str) -> httpx.Response:
        response = httpx.get(f"{self.url}{path}", timeout=10.0)
        response.raise_for_status()
        return response

    def cpu_seconds(self) -> float:
        """utime + stime of the server process, from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def log_tail(self) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


_SAMPLE = re.compile(r"^(\w+)(?:\{[^}]*\})?\s+(\S+)$")
_HISTOGRAMS = {
    f"exporter_{m}_{s}"
    for m in ("batch_size", "model_call_seconds", "request_seconds")
    for s in ("sum", "count")
}


@dataclass
class Snapshot:
    """What the server and this process had done at one moment, to take differences across a window."""

    histograms: dict[str, float]
    """Sums and counts of the server's ``exporter_batch_size``, ``exporter_model_call_seconds`` and
    ``exporter_request_seconds`` histograms (``/metrics``)."""
    server_cpu_s: float
    client_cpu_s: float
    machine_busy_s: float
    machine_steal_s: float
    wall_s: float


async def snapshot(metrics: httpx.AsyncClient, server: Server) -> Snapshot:
    response = await metrics.get(f"{server.url}/metrics")
    response.raise_for_status()
    values = dict.fromkeys(_HISTOGRAMS, 0.0)
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in _HISTOGRAMS:
            values[match.group(1)] += float(match.group(2))
    machine = machine_seconds()
    return Snapshot(
        values, server.cpu_seconds(), time.process_time(), machine[0], machine[1], time.perf_counter()
    )


# ---------------------------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    latencies_s: list[float]
    errors: int
    first_error: str | None
    window_s: float
    start: Snapshot
    end: Snapshot


async def generate_load(
    server: Server, url: str, bodies: Sequence[bytes], *, warmup_s: float, seconds: float
) -> LoadResult:
    """``len(bodies)`` clients, each posting its own body back to back from now until the window closes
    (an empty body: ``GET url`` instead); the responses that complete inside the window (after
    ``warmup_s``, for ``seconds``) are counted."""
    clients = len(bodies)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup_s
    window_end = window_start + seconds

    async def client(http: httpx.AsyncClient, body: bytes) -> None:
        while (started := loop.time()) < window_end:
            problem = None
            try:
                if body:
                    response = await http.post(url, content=body, headers=headers)
                else:
                    response = await http.get(url)
                if response.status_code != 200:
                    problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            finished = loop.time()
            if not window_start <= finished <= window_end:
                continue
            if problem is None:
                latencies.append(finished - started)
            else:
                problems.append(problem)

    async def snapshot_at(moment: float) -> Snapshot:
        await asyncio.sleep(moment - loop.time())
        return await snapshot(metrics, server)

    async with (
        httpx.AsyncClient(limits=limits, timeout=60.0) as http,
        httpx.AsyncClient(timeout=10.0) as metrics,
    ):
        start = asyncio.create_task(snapshot_at(window_start))
        end = asyncio.create_task(snapshot_at(window_end))
        await asyncio.gather(*(client(http, body) for body in bodies))
        return LoadResult(
            latencies, len(problems), problems[0] if problems else None, seconds, await start, await end
        )


def load_row(
    model: str,
    path: str,
    server: Server,
    url: str,
    bodies: Sequence[bytes],
    *,
    warmup_s: float,
    seconds: float,
) -> Row:
    result = asyncio.run(generate_load(server, url, bodies, warmup_s=warmup_s, seconds=seconds))
    start, end = result.start, result.end
    wall = end.wall_s - start.wall_s
    delta = {key: end.histograms[key] - start.histograms[key] for key in _HISTOGRAMS}
    server_cpu = end.server_cpu_s - start.server_cpu_s
    client_cpu = end.client_cpu_s - start.client_cpu_s
    others = end.machine_busy_s - start.machine_busy_s - server_cpu - client_cpu
    calls = delta["exporter_batch_size_count"]
    latencies = np.array(result.latencies_s or [np.nan]) * 1000
    p50, p99 = np.percentile(latencies, [50, 99])
    return Row(
        model,
        path,
        len(bodies),
        round(result.window_s, 2),
        len(result.latencies_s),
        round(len(result.latencies_s) / result.window_s, 1),
        round(float(p50), 3),
        round(float(p99), 3),
        result.errors,
        rows_per_call=round(delta["exporter_batch_size_sum"] / calls, 2) if calls else None,
        model_call_ms=_mean_ms(delta, "exporter_model_call_seconds"),
        server_request_ms=_mean_ms(delta, "exporter_request_seconds"),
        server_cpu=round(server_cpu / wall, 2),
        server_cpu_ms_per_request=round(1000 * server_cpu / len(result.latencies_s), 3)
        if result.latencies_s
        else None,
        client_cpu=round(client_cpu / wall, 2),
        other_cpu=round(max(others, 0.0) / wall, 2),
        steal_cpu=round((end.machine_steal_s - start.machine_steal_s) / wall, 2),
        first_error=result.first_error,
    )


def _mean_ms(delta: dict[str, float], histogram: str) -> float | None:
    count = delta[f"{histogram}_count"]
    return round(1000 * delta[f"{histogram}_sum"] / count, 3) if count else None


# ------------------------------------------------------------------------------------------ one model


LIVE = "GET /v2/health/live"
"""The floor row: one client's round trip through HTTP, uvicorn, FastAPI and httpx with no model or JSON."""


def run_model(
    name: str, args: argparse.Namespace, log: Any, *, with_floor: bool
) -> tuple[ModelInfo, list[Row]]:
    folder, build = build_artifacts(name, args.work, args.rebuild, log)
    manifest = json.loads((folder / "manifest.json").read_text())
    rows: list[Row] = []

    def serve(batching: bool) -> Server:
        label = "on" if batching else "off"
        server = Server(
            folder, args.threads, args.max_batch_delay_ms, batching, args.work / f"{name}-{label}.log"
        )
        server.wait_ready()
        return server

    exit_codes: dict[str, int] = {}
    served = manifest["name"]
    server = serve(batching=False)
    try:
        model_metadata = server.get(f"/v2/models/{served}").json()
        url = f"{server.url}/v2/models/{served}/infer"
        arrays = [request_inputs(manifest, model_metadata, seed) for seed in range(args.clients)]
        bodies = [request_body(a) for a in arrays]
        reply = httpx.post(url, content=bodies[0], headers={"Content-Type": "application/json"}, timeout=30)
        reply.raise_for_status()
        log(f"{name}: server up (batching off); 1 client")
        rows.append(
            load_row(
                name, "batching off", server, url, bodies[:1], warmup_s=args.warmup, seconds=args.seconds
            )
        )
        if with_floor:
            log(f"{name}: 1 client, GET /v2/health/live")
            live = f"{server.url}/v2/health/live"
            rows.append(load_row(name, LIVE, server, live, [b""], warmup_s=args.warmup, seconds=args.seconds))
        log(f"{name}: {args.clients} clients, batching off")
        rows.append(
            load_row(name, "batching off", server, url, bodies, warmup_s=args.warmup, seconds=args.seconds)
        )
    finally:
        exit_codes["batching off"] = server.stop()

    # The in-process baseline runs with no server alive, so nothing else holds the cores.
    log(f"{name}: in-process ONNX Runtime for {args.baseline_seconds:g} s")
    baseline = in_process(name, folder, arrays[0], args.threads, args.baseline_seconds)
    rows.insert(0, baseline)

    server = serve(batching=True)
    try:
        url = f"{server.url}/v2/models/{served}/infer"
        log(f"{name}: server up (dynamic batching); {args.clients} clients")
        rows.append(
            load_row(name, "batching on", server, url, bodies, warmup_s=args.warmup, seconds=args.seconds)
        )
    finally:
        exit_codes["batching on"] = server.stop()
    for row in rows[1:]:
        if row.path != LIVE:
            row.overhead_p50_ms = round(row.p50_ms - baseline.p50_ms, 3)
    info = ModelInfo(
        name,
        str(folder),
        served,
        {k: list(a.shape) for k, a in arrays[0].items()},
        len(bodies[0]),
        len(reply.content),
        build,
        {
            "platform": model_metadata.get("platform"),
            "server_exit_codes": exit_codes,
            "server_log_off": _first_line_with(args.work / f"{name}-off.log", "exporter serve:"),
            "server_log_on": _first_line_with(args.work / f"{name}-on.log", "exporter serve:"),
        },
    )
    return info, rows


def _first_line_with(path: Path, prefix: str) -> str | None:
    return next(
        (line for line in path.read_text(errors="replace").splitlines() if line.startswith(prefix)), None
    )


# ------------------------------------------------------------------------------------------- reporting

COLUMNS = (
    "model",
    "path",
    "clients",
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "p50 - in-process ms",
    "rows/call",
    "model ms/call",
    "handler ms/req",
    "server CPU",
    "server CPU ms/req",
    "client CPU",
    "other CPU",
)


def cells(row: Row) -> list[str]:
    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    path = {"in-process": "in-process ORT (calls/s)", LIVE: f"server, {LIVE} (no model)"}.get(
        row.path, f"server, {row.path}"
    )
    return [
        row.model,
        path,
        str(row.clients),
        f"{row.requests_per_s:.0f}",
        number(row.p50_ms),
        number(row.p99_ms),
        str(row.errors),
        "-" if row.overhead_p50_ms is None else f"{row.overhead_p50_ms:+.2f}",
        number(row.rows_per_call),
        number(row.model_call_ms, 3),
        number(row.server_request_ms, 3),
        number(row.server_cpu),
        number(row.server_cpu_ms_per_request),
        number(row.client_cpu),
        number(row.other_cpu),
    ]


def header_lines(
    environment: dict[str, Any], args: argparse.Namespace, load_start: tuple[float, ...]
) -> list[str]:
    versions = {"exporter": environment["exporter"]} | {p: _version(p) for p in VERSIONS}
    return [
        "versions: " + ", ".join(f"{name} {version}" for name, version in versions.items() if version),
        f"CPU: {environment['cpu']}; {environment['usable_cpus']} usable CPUs; "
        f"flags: {', '.join(environment['cpu_flags']) or 'none of the listed SIMD flags'}; "
        f"python {environment['python']}",
        f"threads: {args.threads} (server --threads = ORT intra_op_num_threads; inter-op 1, sequential); the "
        f"load generator (asyncio + httpx, this process) shares the same {environment['usable_cpus']} cores",
        f"load: batch-1 requests back to back, {args.warmup:g} s warm-up excluded, {args.seconds:g} s timed "
        f"per row; batching on: the server's default max rows (see each model's line), --max-batch-delay-ms "
        f"{args.max_batch_delay_ms:g}; in-process ORT: {args.baseline_seconds:g} s serial loop, the server's "
        "session with ORT's default thread spinning (the server runs without)"
        + (" (--quick: indicative only)" if args.quick else ""),
        f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)}",
    ]


def render_table(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "path") else "right")
    for row in rows:
        table.add_row(*cells(row))
    return table


def describe(model: ModelInfo) -> str:
    """One line per model: what a request carries and what batching on meant (from the server's log)."""
    batching = re.search(
        r"dynamic batching up to \d+ rows within \S+ ms", model.server_settings["server_log_on"] or ""
    )
    return (
        f"{model.name}: served as {model.served_name}, inputs "
        + ", ".join(f"{k} {v}" for k, v in model.inputs.items())
        + f"; request {model.request_bytes} B, response {model.response_bytes} B of JSON; batching on: "
        + (batching.group(0) if batching else "see the server log")
        + f"; artifacts {model.build}"
    )


def render_markdown(rows: Sequence[Row], header: Sequence[str], models: Sequence[ModelInfo]) -> str:
    lines = ["# Model server under load", ""]
    lines += [f"- {line}" for line in header]
    lines += [f"- {describe(m)}" for m in models]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    errors = [f"- {r.model} {r.path} x{r.clients}: {r.first_error}" for r in rows if r.first_error]
    if errors:
        lines += ["", "First error per row:", *errors]
    return "\n".join(lines) + "\n"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _all_cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.split(":", 1)[1].split())
    return []


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/serve-bench"), help="artifacts folders, logs")
    parser.add_argument("--rebuild", action="store_true", help="export again even if the folders exist")
    parser.add_argument("--seconds", type=float, help="timed seconds per load row (default 30, quick 5)")
    parser.add_argument("--warmup", type=float, help="untimed seconds before each row (default 3, quick 1)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 32, quick 8)")
    parser.add_argument("--baseline-seconds", type=float, help="in-process loop seconds (default 5, quick 2)")
    parser.add_argument(
        "--threads", type=int, help="server and in-process ORT threads (default: usable CPUs)"
    )
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0, help="the server's batching window")
    parser.add_argument("--quick", action="store_true", help="5 s rows, 8 clients: for development")
    parser.add_argument("--out", type=Path, help="a folder to write serve.json and serve.md into")
    args = parser.parse_args(argv)
    args.model_names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in args.model_names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    args.seconds = args.seconds or (5.0 if args.quick else 30.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.clients = args.clients or (8 if args.quick else 32)
    args.baseline_seconds = args.baseline_seconds or (2.0 if args.quick else 5.0)
    args.threads = args.threads or len(os.sched_getaffinity(0)) or 1
    args.work = args.work.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    environment = collect_environment(args.threads)
    header = header_lines(environment, args, load_start)
    models: list[ModelInfo] = []
    rows: list[Row] = []
    for name in args.model_names:
        info, model_rows = run_model(name, args, log, with_floor=not models)
        models.append(info)
        rows += model_rows
    total = time.perf_counter() - started
    header.append(
        f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; total {total:.0f} s"
    )
    header.append(
        "during the timed windows, other processes used at most "
        f"{max(r.other_cpu or 0.0 for r in rows):.2f} cores and the hypervisor stole at most "
        f"{max(r.steal_cpu or 0.0 for r in rows):.2f} (other CPU column; /proc/stat)"
    )

    console = Console(width=None if sys.stdout.isatty() else 200)
    for line in header:
        console.print(line, highlight=False)
    title = f"Server under load: {args.threads} server threads, client and server on the same cores"
    for model in models:
        console.print(describe(model), highlight=False)
    console.print(render_table(rows, title))
    for row in rows:
        if row.first_error:
            console.print(
                f"{row.model} {row.path} x{row.clients}: first error: {row.first_error}", highlight=False
            )

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            "schema_version": 1,
            "environment": environment
            | {
                "versions": {p: _version(p) for p in VERSIONS},
                "cpu_flags_all": _all_cpu_flags(),
                "load_average_start": list(load_start),
                "load_average_end": list(os.getloadavg()),
            },
            "settings": {
                "models": args.model_names,
                "threads": args.threads,
                "clients": args.clients,
                "seconds": args.seconds,
                "warmup_seconds": args.warmup,
                "baseline_seconds": args.baseline_seconds,
                "max_batch_delay_ms": args.max_batch_delay_ms,
                "quick": args.quick,
                "work": str(args.work),
            },
            "models": [asdict(m) for m in models],
            "rows": [asdict(r) for r in rows],
            "total_seconds": round(total, 1),
        }
        (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "serve.md").write_text(render_markdown(rows, header, models))
        console.print(f"written: {args.out / 'serve.json'} and {args.out / 'serve.md'}", highlight=False)
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
