"""``exporter serve``: check an artifacts folder, listen, load the model, prove it on the golden inputs
through the HTTP path, then answer; on SIGTERM, drain and exit 0.

Order matters and is the contract: a folder that fails the integrity check is refused before the socket is
bound (exit 2); ``/v2/health/live`` answers as soon as the socket listens; ``/v2/health/ready`` only once
the golden outputs came back right through ``POST .../infer`` (exit 1 when they do not). On SIGTERM (or
Ctrl-C) ``ready`` turns 503, new requests get 503, in-flight ones finish within ``--drain-timeout-s`` (then
they are cut), and the process exits 0; a second signal exits at once (128 + the signal: 143, 130).

One process (``exporter.serving.process``) by default; with ``--workers N``, a supervisor and N of those
processes on the one port, a socket each (``exporter.serving.workers``), with the same contract.
"""

from __future__ import annotations

import functools
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

from exporter.serving.options import (
    GOLDEN_FAILED,
    Prepared,
    ServeOptions,
    bind,
    bind_group,
    loopback_listener,
    open_model,
    prepare,
    stderr_line,
)
from exporter.serving.process import SHUTDOWN_GRACE_S, AloneGate, Role, run_process, url_host
from exporter.serving.worker_side import WorkerLink, with_worker_header
from exporter.serving.workers import run_workers

__all__ = ["GOLDEN_FAILED", "ServeOptions", "open_model", "prepare", "serve"]


def serve(options: ServeOptions) -> int:
    """Run the server until it is drained; the exit code (0 drained, 1 the start-up check failed or a
    worker died, 128 + the signal after a second one).

    Raises:
        UsageError: the folder, the backend, the address or a count is refused (before anything listens).
    """
    private = Path(tempfile.mkdtemp(prefix="exporter-serve-"))
    try:
        prepared = prepare(options, private)
        group = bind_group(options.host, options.port, options.workers) if options.workers > 1 else []
        sock = group[0] if group else bind(options.host, options.port)
        try:
            options.log(_starting(prepared, options, sock))
            if options.workers == 1:
                load = functools.partial(open_model, prepared)
                outcome = run_process(
                    prepared, options, sock, load=load, role=Role(AloneGate(options.log), private)
                )
                exit_code, cut, answered = outcome.exit, outcome.cut, outcome.answered
            else:
                quiet = replace(
                    options, log=stderr_line
                )  # what a worker is given (the CLI's log is not picklable)
                supervised = run_workers(
                    options.workers,
                    _worker,
                    (_Job(quiet, prepared, tuple(group)),),
                    log=options.log,
                    patience_s=options.drain_timeout_s + SHUTDOWN_GRACE_S,
                )
                exit_code, cut, answered = supervised.exit, supervised.cut, supervised.answered
        finally:
            for listening in group or [sock]:
                listening.close()
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if exit_code == 0 and cut:
        options.log(
            f"exporter serve: stopped after the drain timeout ({options.drain_timeout_s:g} s), "
            f"{cut} request(s) cut; {answered} requests answered"
        )
    elif exit_code == 0:
        options.log(f"exporter serve: drained and stopped ({answered} requests answered)")
    return exit_code


def _starting(prepared: Prepared, options: ServeOptions, sock: socket.socket) -> str:
    """The start-up line: what is served, how, and where."""
    signature, artifact = prepared.signature, prepared.artifact
    if signature.batch_dim is None or prepared.max_batch_size <= 1:
        batching = "no dynamic batching" + (
            "" if signature.batch_dim else " (the input spec has no leading batch dim)"
        )
    elif options.max_batch_delay_ms <= 0:
        batching = f"greedy dynamic batching up to {prepared.max_batch_size} rows"
    else:
        batching = (
            f"dynamic batching up to {prepared.max_batch_size} rows within {options.max_batch_delay_ms:g} ms"
        )
    threads = f"{prepared.threads} intra-op thread{'s' if prepared.threads > 1 else ''}"
    processes = threads if options.workers == 1 else f"{options.workers} worker processes, {threads} each"
    host, port = sock.getsockname()[:2]
    if prepared.decoder is not None:
        batching += f"; generate and generate_stream: {prepared.decoder.tokenizer_note}, not batched"
    return (
        f"exporter serve: {signature.name} with {artifact.backend} ({artifact.file}), "
        f"{prepared.files_checked} files match the manifest; {processes}; {batching}; "
        f"bodies up to {prepared.max_body_bytes / (1 << 20):.3g} MiB; listening on http://{url_host(host)}:{port}"
    )


@dataclass(frozen=True)
class _Job:
    """What every worker is given (pickled; sockets pass as file descriptors)."""

    options: ServeOptions
    prepared: Prepared
    sockets: tuple[socket.socket, ...]
    """One listening socket per worker (``bind_group``): worker ``index`` serves ``sockets[index - 1]``."""


def _worker(index: int, connection: Connection, supervisor: int, job: _Job) -> None:
    """One worker process (``run_workers``' target): the one-process server on the shared socket, its
    start-up check on a loopback port of its own, its readiness given by the supervisor, its log lines sent
    there."""
    link = WorkerLink(connection, index, supervisor)
    sock = job.sockets[index - 1]
    for other in job.sockets:
        if other.fileno() != sock.fileno():
            other.close()  # another worker's: holding it here would keep it open after that worker exits
    role = Role(
        link,
        check_socket=loopback_listener(sock.family),
        wrap=with_worker_header,
        speaks_on_second_signal=False,
        early_signals=link.early_signals,
    )
    load = functools.partial(open_model, job.prepared)
    outcome = run_process(job.prepared, replace(job.options, log=link.log), sock, load=load, role=role)
    link.stopped(outcome.exit, outcome.cut)
    sys.exit(outcome.exit)
