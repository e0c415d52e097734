"""``benchmarks/serve.py``'s rows and what it prints and writes: a rich table on the terminal and, with
``--out DIR``, ``serve.json`` (every field, versions, settings) and ``serve.md`` (header lines and table)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from exporter.environment import collect_environment


@dataclass
class Row:
    model: str
    server: str
    key: str
    """The server's --peers name, or ``floor`` for the in-process row."""
    clients: int | None = None
    requests: int | None = None
    seconds: float | None = None
    requests_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    """Status errors (status > 399) plus socket errors (connect, read, write, timeout), as wrk counts them."""
    status_errors: int | None = None
    socket_errors: int | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    overhead_p50_ms: float | None = None
    """A 1-client row's p50 minus the in-process floor's p50."""
    rows_per_call: float | None = None
    """Mean rows per model call over the window, from the server's metrics (ours, Triton)."""
    server_cpu_ms_per_request: float | None = None
    """CPU time of the server's whole process tree per answered request."""
    server_cpu: float | None = None
    """The server tree's CPU seconds per wall second (2.0 = both cores)."""
    wrk_cpu: float | None = None
    """wrk's CPU seconds per wall second: the load generator shares the cores."""
    other_cpu: float | None = None
    """Every other process's CPU seconds per wall second (/proc/stat): near 0 on an idle machine."""
    wrk_threads: int | None = None
    note: str | None = None
    """Why a server has no measured row (install, start, wrong answer), or what went wrong in one."""


@dataclass
class ModelInfo:
    name: str
    served_name: str
    folder: str
    inputs: dict[str, list[int]]
    """Input name -> the shape of the request's tensor."""
    request_bytes: int = 0
    build: str = ""
    """``built in N s`` or ``reused``."""


@dataclass
class ServerInfo:
    model: str
    key: str
    label: str
    versions: dict[str, str | None] = field(default_factory=dict)
    settings: str = ""
    start_line: str | None = None
    """Ours: its ``exporter serve:`` start-up line (backend, threads, batching)."""
    server_metadata: Any = None
    """``GET /v2`` (name, version), where the server answers it."""
    response_bytes: int | None = None
    exit_code: int | None = None
    stopped: str = ""
    """How it ended after the measurements (``ServerProcess.stopped``)."""


COLUMNS = (
    "model",
    "server",
    "conns",
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "p50 - floor ms",
    "rows/call",
    "server CPU ms/req",
    "server CPU",
    "wrk CPU",
    "other CPU",
)


def cells(row: Row) -> list[str]:
    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    if row.requests_per_s is None:
        return [row.model, row.server, "-", f"not measured: {row.note}", *["-"] * (len(COLUMNS) - 4)]
    return [
        row.model,
        row.server + (f" ({row.note})" if row.note else ""),
        str(row.clients),
        f"{row.requests_per_s:.0f}",
        number(row.p50_ms),
        number(row.p99_ms),
        str(row.errors),
        "-" if row.overhead_p50_ms is None else f"{row.overhead_p50_ms:+.2f}",
        number(row.rows_per_call),
        number(row.server_cpu_ms_per_request, 3),
        number(row.server_cpu),
        number(row.wrk_cpu),
        number(row.other_cpu),
    ]


def header_lines(
    args: argparse.Namespace,
    *,
    environment: dict[str, Any],
    models: Sequence[ModelInfo],
    servers: Sequence[ServerInfo],
    load: tuple[tuple[float, ...], tuple[float, ...]],
    total_s: float,
) -> list[str]:
    flags = ", ".join(environment["cpu_flags"]) or "none of the listed SIMD flags"
    clients = ", ".join(map(str, args.clients))
    lines = [
        f"CPU: {environment['cpu']}; {environment['usable_cpus']} usable CPUs; flags: {flags}; "
        f"python {environment['python']}",
        f"threads: {args.threads} ORT intra-op threads per server in all (ours --workers 2: shared between "
        "its processes), inter-op 1, sequential, intra- and inter-op spinning off; the same model.onnx",
        f"load: wrk {args.wrk_threads} thread(s), keep-alive, one batch-1 JSON body per model, connections "
        f"{clients}; {args.warmup:g} s warm-up excluded, {args.seconds:g} s timed per point; floor: "
        f"{args.baseline_seconds:g} s in-process session.run loop, no server alive"
        + (" (--quick: indicative only)" if args.quick else ""),
        f"load average at start {' '.join(f'{x:.2f}' for x in load[0])}, at end "
        f"{' '.join(f'{x:.2f}' for x in load[1])}; total {total_s:.0f} s",
    ]
    if args.note:
        lines.append(f"note: {args.note}")
    seen: set[str] = set()
    for server in servers:
        if server.key in seen or not server.versions:
            continue
        seen.add(server.key)
        versions = ", ".join(f"{p} {v}" for p, v in server.versions.items() if v)
        metadata = server.server_metadata
        reported = (
            f"; GET /v2: {metadata.get('name')} {metadata.get('version')}"
            if isinstance(metadata, dict)
            else ""
        )
        lines.append(f"{server.label}: {versions}{reported}; {server.settings}")
    for model in models:
        sizes = ", ".join(
            f"{s.label} {s.response_bytes}" for s in servers if s.model == model.name and s.response_bytes
        )
        lines.append(
            f"{model.name}: served as {model.served_name}, inputs "
            + ", ".join(f"{k} {v}" for k, v in model.inputs.items())
            + f"; request {model.request_bytes} B; response bytes: {sizes or '-'}; artifacts {model.build}"
        )
        lines += [
            f"{model.name}, {s.label}: stop: {s.stopped}"
            for s in servers
            if s.model == model.name and "kill" in s.stopped
        ]
        lines += [
            f"{model.name}, {s.label}: {s.start_line}"
            for s in servers
            if s.model == model.name and s.start_line
        ]
    return lines


def render_table(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "server") else "right")
    for row in rows:
        table.add_row(*cells(row))
    return table


def render_markdown(rows: Sequence[Row], header: Sequence[str]) -> str:
    lines = ["# exporter serve against its peers, under wrk", ""]
    lines += [f"- {line}" for line in header]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(
    args: argparse.Namespace,
    *,
    models: Sequence[ModelInfo],
    rows: Sequence[Row],
    servers: Sequence[ServerInfo],
    load_start: tuple[float, ...],
    total_s: float,
) -> None:
    environment = collect_environment(args.threads)
    load_end = os.getloadavg()
    header = header_lines(
        args,
        environment=environment,
        models=models,
        servers=servers,
        load=(load_start, load_end),
        total_s=total_s,
    )
    console = Console(width=None if sys.stdout.isatty() else 220)
    for line in header:
        console.print(line, highlight=False, markup=False)
    console.print(render_table(rows, f"Servers under wrk: {args.threads} ORT threads each, one machine"))
    if args.out is None:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {
        key: (str(value) if key in ("work", "out") else value)
        for key, value in vars(args).items()
        if key not in ("versions", "models", "peers")
    }
    report = {
        "schema_version": 2,
        "environment": environment | {"load_average_start": load_start, "load_average_end": load_end},
        "settings": settings,
        "models": [asdict(m) for m in models],
        "servers": [asdict(s) for s in servers],
        "rows": [asdict(r) for r in rows],
        "total_seconds": round(total_s, 1),
    }
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "serve.md").write_text(render_markdown(rows, header))
    console.print(f"written: {args.out / 'serve.json'} and {args.out / 'serve.md'}", highlight=False)
