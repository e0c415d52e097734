"""``exporter serve``: one verified artifacts folder over HTTP (KServe v2), by ``exporter.serving``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exporter.cli.shared import DebugFlag, backend_help, err, guarded

__all__ = ["serve_command"]


def serve_command(
    folder: Annotated[Path, typer.Argument(help="An artifacts folder written by exporter export.")],
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help=f"{backend_help('Which shipped artifact answers')} [default: the fastest the report ranks].",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            max=4096,
            help="Intra-op threads of each worker process [default: usable CPUs / workers, at least 1].",
        ),
    ] = None,
    max_batch_delay_ms: Annotated[
        float,
        typer.Option(
            "--max-batch-delay-ms",
            min=0,
            max=10_000,
            help="0: run as soon as the model is free, on whatever is queued; a window trades latency for "
            "larger batches.",
        ),
    ] = 0.0,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size",
            min=1,
            help="Rows per model call; 1 turns batching off [default: the batch dim's max, else 64].",
        ),
    ] = None,
    max_body_mb: Annotated[
        float | None,
        typer.Option(
            "--max-body-mb",
            min=0.001,
            help="Larger request bodies get 400 [default: what the model's largest valid input takes as "
            "JSON, at least 1 MiB; 64 when a dynamic dim has no maximum].",
        ),
    ] = None,
    drain_timeout_s: Annotated[
        float,
        typer.Option(
            "--drain-timeout-s",
            min=0,
            help="On SIGTERM, wait this long for in-flight requests, then cut them.",
        ),
    ] = 30.0,
    header_timeout_s: Annotated[
        float,
        typer.Option(
            "--header-timeout-s", min=0.1, help="Close a connection that has not sent its headers by then."
        ),
    ] = 10.0,
    body_timeout_s: Annotated[
        float,
        typer.Option("--body-timeout-s", min=0.1, help="An infer body must arrive within this (else 408)."),
    ] = 60.0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            min=1,
            help="Beyond this many open connections (per worker process), requests get 503.",
        ),
    ] = 1000,
    docs: Annotated[bool, typer.Option("--docs", help="Serve /docs and /openapi.json.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=1024,
            help="Server processes sharing the port, each loading the model and checking it; a supervisor "
            "forwards signals and /metrics sums them all.",
        ),
    ] = 1,
    debug: DebugFlag = False,
) -> None:
    """Serve an artifacts folder over the Open Inference Protocol (KServe v2): health, metadata, infer,
    /metrics; ready only after the golden inputs come back right through HTTP.

    Exit codes: 0 stopped by SIGTERM/Ctrl-C after draining; 1 the model failed to load or its golden check;
    2 bad input (not an artifacts folder, a file modified after export, an unshipped backend, a busy port).
    """
    from exporter.serving.server import ServeOptions, serve

    options = ServeOptions(
        folder,
        backend,
        host,
        port,
        threads,
        max_batch_delay_ms,
        max_batch_size,
        max_body_mb,
        drain_timeout_s,
        header_timeout_s,
        body_timeout_s,
        max_connections,
        docs,
        workers,
        log=lambda message: err.print(message, highlight=False, markup=False, soft_wrap=True),
    )
    raise typer.Exit(guarded(debug, lambda: serve(options)))
