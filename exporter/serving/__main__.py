"""``python -m exporter.serving ARTIFACTS``: the server without the rest of exporter (what a bundle's
Dockerfile runs). Flags and exit codes are those of ``exporter serve``; argparse, so no CLI stack is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exporter.backends.registry import servable_backends
from exporter.errors import ExporterError
from exporter.serving.server import ServeOptions, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.serving",
        description="Serve a verified exporter artifacts folder over KServe v2 (Open Inference Protocol).",
    )
    parser.add_argument("folder", type=Path, help="the artifacts folder (or a bundle's artifacts/)")
    parser.add_argument(
        "--backend", choices=list(servable_backends()), help="default: the fastest shipped artifact"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--threads", type=int, help="intra-op threads per worker (default: usable CPUs / workers, at least 1)"
    )
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=0.0,
        help="0: run as soon as the model is free, on whatever is queued; a window trades latency for larger "
        "batches (default: 0)",
    )
    parser.add_argument("--max-batch-size", type=int, help="1 turns dynamic batching off")
    parser.add_argument(
        "--max-body-mb", type=float, help="default: what the model's largest valid input takes as JSON"
    )
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--header-timeout-s", type=float, default=10.0)
    parser.add_argument("--body-timeout-s", type=float, default=60.0)
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections per worker process beyond which requests get 503",
    )
    parser.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own model and --threads (default: 1)",
    )
    args = parser.parse_args(argv)
    options = ServeOptions(
        args.folder,
        args.backend,
        args.host,
        args.port,
        args.threads,
        args.max_batch_delay_ms,
        args.max_batch_size,
        args.max_body_mb,
        args.drain_timeout_s,
        args.header_timeout_s,
        args.body_timeout_s,
        args.max_connections,
        args.docs,
        args.workers,
    )
    try:
        return serve(options)
    except ExporterError as error:
        print(f"error: {error}", file=sys.stderr)
        return int(error.exit_code)


if __name__ == "__main__":
    sys.exit(main())
