"""What ``exporter serve`` is asked for (``ServeOptions``) and what is known before anything listens: the
checked folder, the model's signature, the threads and limits (``prepare``), the bound socket (``bind``).

The files the server loads are copied to a private folder as they are hash-checked, and loaded from there:
what runs is what was checked, whatever happens to the artifacts folder afterwards. With ``--workers N``
the supervisor prepares once and every worker loads from that one private copy.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from exporter.backends.registry import OpenContext, call_convention, open_file
from exporter.documents.manifest import Manifest, read_manifest
from exporter.errors import UsageError
from exporter.gate.files import spec_of
from exporter.runners.base import Runner
from exporter.serving.artifact import ServedArtifact, choose_artifact, copy_checked
from exporter.serving.decoder import DecoderServing, decoder_of
from exporter.serving.signature import ModelSignature, default_body_limit, signature_of
from exporter.specs.inputs import InputSpec

__all__ = ["GOLDEN_FAILED", "Prepared", "ServeOptions", "bind", "bind_group", "open_model", "prepare"]

UNBOUNDED_BATCH_DEFAULT = 64
"""Rows per model call when the spec's batch dim has no maximum and ``--max-batch-size`` is not given."""

GOLDEN_FAILED = 1
"""Exit code when the model cannot be loaded or its golden outputs do not match (as ``exporter verify``)."""


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ServeOptions:
    folder: Path
    backend: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None
    """Intra-op threads of each server process; None: the usable CPUs split among the workers (at least 1)."""
    max_batch_delay_ms: float = 0.0
    """0: greedy batching (the model runs as soon as it is free, on whatever is queued); a window trades
    latency for larger batches."""
    max_batch_size: int | None = None
    """None: the batch dim's declared maximum (64 when it has none); 1 turns dynamic batching off."""
    max_body_mb: float | None = None
    """None: what the model's largest valid input takes as JSON (``default_body_limit``)."""
    drain_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1000
    """Open connections (stalled ones included) of each server process beyond which requests get 503."""
    docs: bool = False
    workers: int = 1
    """Server processes sharing the listening socket (``exporter.serving.workers``); 1: no supervisor."""
    log: Callable[[str], None] = field(default=stderr_line, compare=False)


@dataclass(frozen=True)
class Prepared:
    """What is known before the socket is bound: the checked folder and the model's signature.

    ``folder`` is the private copy of the files the server reads (``copy_checked``), not the one given;
    ``threads`` is per server process.
    """

    folder: Path
    manifest: Manifest
    artifact: ServedArtifact
    signature: ModelSignature
    spec: InputSpec
    files_checked: int
    threads: int
    max_batch_size: int
    max_body_bytes: int
    decoder: DecoderServing | None = None
    """Set for a decoder exported with its cache: the generate endpoints' layout, tokenizer and checks."""


def prepare(options: ServeOptions, private: Path) -> Prepared:
    """Read the manifest, choose the artifact, copy the files it reads into ``private`` while checking
    every file's hash, derive the signature from the copy.

    Raises:
        UsageError: not an artifacts folder, a bad backend, a folder that fails the integrity check, or a
            count below 1.
    """
    if options.workers < 1:
        raise UsageError("--workers must be at least 1")
    if options.max_batch_size is not None and options.max_batch_size < 1:
        raise UsageError("--max-batch-size must be at least 1 (1 turns dynamic batching off)")
    manifest = read_manifest(options.folder)
    artifact = choose_artifact(options.folder, manifest, options.backend)
    checked = copy_checked(options.folder, manifest, artifact, private)
    signature = signature_of(private, manifest)
    threads = options.threads or max(1, len(os.sched_getaffinity(0)) // options.workers)
    batch_max = 1
    if signature.batch_dim is not None:
        declared = signature.dim_ranges.get(signature.batch_dim, (1, None))[1]
        batch_max = options.max_batch_size or declared or UNBOUNDED_BATCH_DEFAULT
        if declared is not None:
            batch_max = min(batch_max, declared)
    if options.max_body_mb is not None:
        max_body = int(options.max_body_mb * 1024 * 1024)
    else:
        max_body = default_body_limit(signature)
    spec = spec_of(manifest)
    decoder = decoder_of(private, manifest)
    return Prepared(
        private, manifest, artifact, signature, spec, checked, threads, batch_max, max_body, decoder
    )


def open_model(prepared: Prepared) -> Runner:
    """The artifact loaded by its backend's registered runner, as ``exporter verify`` opens it (the
    manifest's call convention and OpenVINO config), with the server's threads and ONNX Runtime's
    intra-op threads sleeping between calls (``OpenContext.spinning``)."""
    artifact = prepared.artifact
    call = call_convention(artifact.call.model_dump() if artifact.call is not None else None)
    context = OpenContext(prepared.spec, prepared.threads, call, artifact.config, spinning=False)
    return open_file(artifact.backend, prepared.folder / artifact.file, context)


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The listening socket, bound before the model loads, so a taken port fails at once (exit 2)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r} cannot be resolved: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {error.strerror}; pick another --port or stop what uses it"
        ) from None
    sock.set_inheritable(True)
    return sock


def bind_group(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets on one address, one per worker, with ``SO_REUSEPORT``: the kernel spreads new
    connections over the listening ones by a hash of their addresses.

    One socket inherited by every worker (uvicorn's and gunicorn's way) left the spread to whichever worker
    woke first in ``accept``: 32 keep-alive connections opened at once landed 544/46 (CPU ticks) on the two
    workers in two of four starts, and those runs did 10.2k requests/s instead of 16k. The port is first
    bound once without ``SO_REUSEPORT``, so that a port taken by anyone (another ``exporter serve --workers``
    included, which would otherwise join the group and share the traffic) fails at once, as with one
    process. Where ``SO_REUSEPORT`` does not exist, the workers share one socket.
    """
    probe = bind(host, port)
    if not hasattr(socket, "SO_REUSEPORT"):
        return [probe] * count
    port = probe.getsockname()[1]  # --port 0: the one the system chose
    probe.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(bind(host, port, reuse_port=True))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


def loopback_listener(family: socket.AddressFamily) -> socket.socket:
    """A socket bound to a free port on the loopback address of ``family`` (a worker's start-up check)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock
