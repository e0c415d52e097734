"""``exporter serve``: check an artifacts folder, listen, load the model, prove it on the golden inputs
through the HTTP path, then answer; on SIGTERM, drain and exit 0.

Order matters and is the contract: a folder that fails the integrity check is refused before the socket is
bound (exit 2); ``/v2/health/live`` answers as soon as the socket listens; ``/v2/health/ready`` only once
the golden outputs came back right through ``POST .../infer`` (exit 1 when they do not). On SIGTERM (or
Ctrl-C) ``ready`` turns 503, new requests get 503, in-flight ones finish within ``--drain-timeout-s`` (then
they are cut), and the process exits 0; a second signal exits at once (128 + the signal: 143, 130).

The files the server loads are copied to a private folder as they are hash-checked, and loaded from there:
what runs is what was checked, whatever happens to the artifacts folder afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import uvicorn

from exporter.backends.registry import OpenContext, call_convention, open_file
from exporter.documents.manifest import Manifest, read_manifest
from exporter.errors import UsageError
from exporter.gate.files import spec_of
from exporter.interrupts import frames_on_thread_stack
from exporter.runners.base import Runner
from exporter.serving.app import ServerState, build_app
from exporter.serving.artifact import ServedArtifact, choose_artifact, copy_checked
from exporter.serving.golden import golden_check
from exporter.serving.limits import guarded_protocol
from exporter.serving.signature import ModelSignature, default_body_limit, signature_of
from exporter.specs.inputs import InputSpec

__all__ = ["GOLDEN_FAILED", "ServeOptions", "open_model", "prepare", "serve"]

UNBOUNDED_BATCH_DEFAULT = 64
"""Rows per model call when the spec's batch dim has no maximum and ``--max-batch-size`` is not given."""

GOLDEN_FAILED = 1
"""Exit code when the model cannot be loaded or its golden outputs do not match (as ``exporter verify``)."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ServeOptions:
    folder: Path
    backend: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None
    max_batch_delay_ms: float = 2.0
    max_batch_size: int | None = None
    """None: the batch dim's declared maximum (64 when it has none); 1 turns dynamic batching off."""
    max_body_mb: float | None = None
    """None: what the model's largest valid input takes as JSON (``default_body_limit``)."""
    drain_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1000
    """Open connections (stalled ones included) beyond which requests get 503 (uvicorn's limit)."""
    docs: bool = False
    log: Callable[[str], None] = field(default=_stderr, compare=False)


@dataclass(frozen=True)
class Prepared:
    """What is known before the socket is bound: the checked folder and the model's signature.

    ``folder`` is the private copy of the files the server reads (``copy_checked``), not the one given.
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


def prepare(options: ServeOptions, private: Path) -> Prepared:
    """Read the manifest, choose the artifact, copy the files it reads into ``private`` while checking
    every file's hash, derive the signature from the copy.

    Raises:
        UsageError: not an artifacts folder, a bad backend, or a folder that fails the integrity check.
    """
    manifest = read_manifest(options.folder)
    artifact = choose_artifact(options.folder, manifest, options.backend)
    checked = copy_checked(options.folder, manifest, artifact, private)
    signature = signature_of(private, manifest)
    threads = options.threads or len(os.sched_getaffinity(0))
    batch_max = 1
    if signature.batch_dim is not None:
        declared = signature.dim_ranges.get(signature.batch_dim, (1, None))[1]
        batch_max = options.max_batch_size or declared or UNBOUNDED_BATCH_DEFAULT
        if declared is not None:
            batch_max = min(batch_max, declared)
    if options.max_batch_size is not None and options.max_batch_size < 1:
        raise UsageError("--max-batch-size must be at least 1 (1 turns dynamic batching off)")
    if options.max_body_mb is not None:
        max_body = int(options.max_body_mb * 1024 * 1024)
    else:
        max_body = default_body_limit(signature)
    spec = spec_of(manifest)
    return Prepared(private, manifest, artifact, signature, spec, checked, threads, batch_max, max_body)


def open_model(prepared: Prepared) -> Runner:
    """The artifact loaded by its backend's registered runner, as ``exporter verify`` opens it (the
    manifest's call convention and OpenVINO config), with the server's threads and ONNX Runtime's
    intra-op threads sleeping between calls (``OpenContext.spinning``)."""
    artifact = prepared.artifact
    call = call_convention(artifact.call.model_dump() if artifact.call is not None else None)
    context = OpenContext(prepared.spec, prepared.threads, call, artifact.config, spinning=False)
    return open_file(artifact.backend, prepared.folder / artifact.file, context)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so a taken port fails at once (exit 2)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r} cannot be resolved: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {error.strerror}; pick another --port or stop what uses it"
        ) from None
    sock.set_inheritable(True)
    return sock


class _DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains (ready turns 503, in-flight requests finish)
    instead of closing at once, and the signal is not re-raised afterwards: a drained server exits 0.

    A second signal stops the process at once: one line, exit 128 + the signal (143 for SIGTERM), the
    private copy removed, nothing else waited for (uvicorn would cancel the requests and log tracebacks).
    """

    def __init__(self, config: uvicorn.Config, state: ServerState, private: Path) -> None:
        super().__init__(config)
        self.state = state
        self.private = private
        self.signalled = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers, with their frames on the thread's stack (see ``exporter.interrupts``)."""
        with super().capture_signals():
            frames_on_thread_stack(signal.SIGINT, signal.SIGTERM)
            yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.signalled:
            name = signal.Signals(sig).name
            line = f"exporter serve: second {name}: stopped at once, without draining\n"
            with contextlib.suppress(OSError):
                os.write(2, line.encode())  # not print: the main thread may be inside a print
            shutil.rmtree(self.private, ignore_errors=True)
            os._exit(128 + sig)
        self.signalled = True
        if not self.state.ready:
            self.should_exit = True  # loading or checking: nothing to drain
            return
        self.state.draining = True


def serve(options: ServeOptions) -> int:
    """Run the server until it is drained; the exit code (0 drained, 1 the start-up check failed).

    Raises:
        UsageError: the folder, the backend or the address is refused (before anything listens).
    """
    private = Path(tempfile.mkdtemp(prefix="exporter-serve-"))
    try:
        return _serve(options, private)
    finally:
        shutil.rmtree(private, ignore_errors=True)


SWITCH_INTERVAL_S = 0.001
"""How long a thread holding the GIL keeps it when another wants it (Python's default: 5 ms). The event
loop shares the GIL with the JSON threads: at 5 ms a health probe waited several turns of 5 ms."""


def _serve(options: ServeOptions, private: Path) -> int:
    prepared = prepare(options, private)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    sock = bind(options.host, options.port)
    state = ServerState(
        prepared.signature,
        max_body_bytes=prepared.max_body_bytes,
        max_batch_size=prepared.max_batch_size,
        max_batch_delay_s=options.max_batch_delay_ms / 1000,
        body_timeout_s=options.body_timeout_s,
        docs=options.docs,
    )
    app = build_app(state)
    server = _DrainingServer(_config(app, options), state, private)
    artifact = prepared.artifact
    host, port = sock.getsockname()[:2]
    batching = (
        f"dynamic batching up to {state.max_batch_size} rows within {options.max_batch_delay_ms:g} ms"
        if state.batching
        else "no dynamic batching"
        + ("" if prepared.signature.batch_dim else " (the input spec has no leading batch dim)")
    )
    options.log(
        f"exporter serve: {prepared.signature.name} with {artifact.backend} ({artifact.file}), "
        f"{prepared.files_checked} files match the manifest; {prepared.threads} threads; {batching}; "
        f"bodies up to {prepared.max_body_bytes / (1 << 20):.3g} MiB; "
        f"listening on http://{_url_host(host)}:{port}"
    )
    outcome: dict[str, int] = {"exit": 0, "cut": 0}

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        helpers = [
            asyncio.create_task(
                _start(server, state, prepared, options, outcome=outcome, address=(host, port))
            ),
            asyncio.create_task(_drain(server, state, options, outcome)),
        ]
        await serving
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if state.batcher is not None:
            await state.batcher.stop()

    try:
        if _has("uvloop"):
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    finally:
        sock.close()
        state.close()
    if outcome["exit"] == 0 and outcome["cut"]:
        options.log(
            f"exporter serve: stopped after the drain timeout ({options.drain_timeout_s:g} s), "
            f"{outcome['cut']} request(s) cut; {_served(state)} requests answered"
        )
    elif outcome["exit"] == 0:
        options.log(f"exporter serve: drained and stopped ({_served(state)} requests answered)")
    return outcome["exit"]


SHUTDOWN_GRACE_S = 1
"""uvicorn's own graceful-shutdown wait, after the drain: only requests that are not inference ones (health,
metadata) can still be running then, and they take milliseconds. ``--drain-timeout-s`` is the drain's
budget, not also uvicorn's (it used to be both, so one stalled client held shutdown for twice the time)."""


def _config(app: object, options: ServeOptions) -> uvicorn.Config:
    """uvicorn with the header timeout, the connection limit and no access log."""
    base: type[asyncio.Protocol]
    if _has("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="uvloop" if _has("uvloop") else "asyncio",
        http=guarded_protocol(base, options.header_timeout_s),
        limit_concurrency=options.max_connections,
        h11_max_incomplete_event_size=64 * 1024,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


async def _start(
    server: uvicorn.Server,
    state: ServerState,
    prepared: Prepared,
    options: ServeOptions,
    *,
    outcome: dict[str, int],
    address: tuple[str, int],
) -> None:
    """Load the model once the socket listens, check it on the golden cases over HTTP, then turn ready."""
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    artifact = prepared.artifact
    try:
        runner = await asyncio.to_thread(open_model, prepared)
        state.attach(runner, artifact.platform)
        loaded = time.perf_counter() - started
        state.status = "checking the golden outputs"
        host, port = address
        url = f"http://{_url_host(_loopback(host))}:{port}/v2/models/{prepared.signature.name}/infer"
        summary = await golden_check(
            url,
            state.token,
            folder=prepared.folder,
            manifest=prepared.manifest,
            artifact=artifact,
            signature=prepared.signature,
        )
    except Exception as error:
        text = str(error).strip().splitlines()
        state.status = f"failed: {text[0] if text else type(error).__name__}"
        options.log(f"exporter serve: error: {state.status.removeprefix('failed: ')}; not serving")
        outcome["exit"] = GOLDEN_FAILED
        server.should_exit = True
        return
    state.ready = True
    state.status = "ready"
    if state.metrics is not None:
        state.metrics.ready_child.set(1)
    options.log(f"exporter serve: ready: loaded in {loaded:.2f} s; {summary}")


async def _drain(
    server: uvicorn.Server, state: ServerState, options: ServeOptions, outcome: dict[str, int]
) -> None:
    """Once draining, stop the server when nothing is in flight, or cut what is when the timeout is up."""
    while not state.draining:
        await asyncio.sleep(0.02)
    options.log(f"exporter serve: draining: {state.inflight} request(s) in flight; new ones get 503")
    deadline = time.monotonic() + options.drain_timeout_s
    while not state.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if not state.idle:
        outcome["cut"] = max(1, state.inflight)
        server.force_exit = True  # uvicorn waits for no connection or task now
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()  # the request sees a disconnect and ends
    server.should_exit = True


def _loopback(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _served(state: ServerState) -> int:
    return 0 if state.metrics is None else state.metrics.answered()


def _has(module: str) -> bool:
    with contextlib.suppress(ImportError):
        __import__(module)
        return True
    return False
