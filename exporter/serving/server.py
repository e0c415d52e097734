"""``exporter serve``: check an artifacts folder, listen, load the model, prove it on the golden inputs
through the HTTP path, then answer; on SIGTERM, drain and exit 0.

Order matters and is the contract: a folder that fails the integrity check is refused before the socket is
bound (exit 2); ``/v2/health/live`` answers as soon as the socket listens; ``/v2/health/ready`` only once
the golden outputs came back right through ``POST .../infer`` (exit 1 when they do not). On SIGTERM (or
Ctrl-C) ``ready`` turns 503, new requests get 503, in-flight ones finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import uvicorn

from exporter.errors import UsageError
from exporter.interrupts import frames_on_thread_stack
from exporter.manifest import GoldenCaseEntry, Manifest, read_manifest
from exporter.serving.app import SELF_CHECK_HEADER, ServerState, build_app
from exporter.serving.artifact import ServedArtifact, check_integrity, choose_artifact, golden_cases
from exporter.serving.protocol import DATATYPE_OF, ModelSignature, signature_of
from exporter.serving.runtimes import open_runner

__all__ = ["GOLDEN_FAILED", "ServeOptions", "prepare", "serve"]

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
    max_body_mb: float = 64.0
    drain_timeout_s: float = 30.0
    log: Callable[[str], None] = field(default=_stderr, compare=False)


@dataclass(frozen=True)
class Prepared:
    """What is known before the socket is bound: the checked folder and the model's signature."""

    folder: Path
    manifest: Manifest
    artifact: ServedArtifact
    signature: ModelSignature
    files_checked: int
    threads: int
    max_batch_size: int


def prepare(options: ServeOptions) -> Prepared:
    """Read the manifest, choose the artifact, check every file's hash, derive the signature.

    Raises:
        UsageError: not an artifacts folder, a bad backend, or a folder that fails the integrity check.
    """
    folder = options.folder
    manifest = read_manifest(folder)
    artifact = choose_artifact(folder, manifest, options.backend)
    checked = check_integrity(folder, manifest, artifact)
    signature = signature_of(folder, manifest)
    threads = options.threads or len(os.sched_getaffinity(0))
    batch_max = 1
    if signature.batch_dim is not None:
        declared = signature.dim_ranges.get(signature.batch_dim, (1, None))[1]
        batch_max = options.max_batch_size or declared or UNBOUNDED_BATCH_DEFAULT
        if declared is not None:
            batch_max = min(batch_max, declared)
    if options.max_batch_size is not None and options.max_batch_size < 1:
        raise UsageError("--max-batch-size must be at least 1 (1 turns dynamic batching off)")
    return Prepared(folder, manifest, artifact, signature, checked, threads, batch_max)


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
    instead of closing at once, and the signal is not re-raised afterwards: a drained server exits 0."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers, with their frames on the thread's stack (see ``exporter.interrupts``)."""
        with super().capture_signals():
            frames_on_thread_stack(signal.SIGINT, signal.SIGTERM)
            yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining or not self.state.ready:
            self.should_exit = True
            if self.state.draining:
                self.force_exit = True
            return
        self.state.draining = True


def serve(options: ServeOptions) -> int:
    """Run the server until it is drained; the exit code (0 drained, 1 the start-up check failed).

    Raises:
        UsageError: the folder, the backend or the address is refused (before anything listens).
    """
    prepared = prepare(options)
    sock = bind(options.host, options.port)
    state = ServerState(
        prepared.signature,
        max_body_bytes=int(options.max_body_mb * 1024 * 1024),
        max_batch_size=prepared.max_batch_size,
        max_batch_delay_s=options.max_batch_delay_ms / 1000,
    )
    app = build_app(state)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        timeout_graceful_shutdown=max(1, int(options.drain_timeout_s)),
    )
    server = _DrainingServer(config, state)
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
        f"listening on http://{_url_host(host)}:{port}"
    )
    outcome: dict[str, int] = {"exit": 0}

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        helpers = [
            asyncio.create_task(
                _start(server, state, prepared, options, outcome=outcome, address=(host, port))
            ),
            asyncio.create_task(_drain(server, state, options)),
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
        if state.worker is not None:
            state.worker.close()
    if outcome["exit"] == 0:
        options.log(f"exporter serve: drained and stopped ({_served(state)} requests answered)")
    return outcome["exit"]


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
        names = [rule.name for rule in prepared.signature.inputs]
        runner = await asyncio.to_thread(open_runner, prepared.folder, artifact, prepared.threads, names)
        state.attach(runner)
        loaded = time.perf_counter() - started
        state.status = "checking the golden outputs"
        summary = await _golden_check(state, prepared, address)
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
        state.metrics.ready.labels(prepared.signature.name).set(1)
    options.log(f"exporter serve: ready: loaded in {loaded:.2f} s; {summary}")


async def _drain(server: uvicorn.Server, state: ServerState, options: ServeOptions) -> None:
    """Once draining, stop the server when nothing is in flight (or when the drain timeout is up)."""
    while not state.draining:
        await asyncio.sleep(0.02)
    options.log(f"exporter serve: draining: {state.inflight} request(s) in flight; new ones get 503")
    deadline = time.monotonic() + options.drain_timeout_s
    while not state.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    server.should_exit = True


class GoldenMismatch(Exception):
    """The served artifact's outputs on a golden case differ from the manifest's reference outputs."""


async def _golden_check(state: ServerState, prepared: Prepared, address: tuple[str, int]) -> str:
    """Every golden case through ``POST /v2/models/{name}/infer`` (the path clients take), compared with the
    reference outputs: within the manifest's tolerance (float artifacts) or the parity budget's cosine
    (lossy ones)."""
    host, port = address
    url = f"http://{_url_host(_loopback(host))}:{port}/v2/models/{prepared.signature.name}/infer"
    worst = 0.0
    cases = golden_cases(prepared.manifest)
    for case in cases:
        inputs = _npz(prepared.folder / case.inputs)
        expected = _npz(prepared.folder / case.outputs)
        body = {
            "id": f"golden-{case.case}",
            "inputs": [
                {
                    "name": rule.name,
                    "shape": list(inputs[rule.name].shape),
                    "datatype": rule.datatype,
                    "data": inputs[rule.name].reshape(-1).tolist(),
                }
                for rule in prepared.signature.inputs
            ],
        }
        reply = await asyncio.to_thread(_post, url, body, state.token)
        worst = max(worst, _compare(case, reply, expected, prepared))
    artifact = prepared.artifact
    if artifact.budget is not None:
        return (
            f"{len(cases)} golden cases within the parity budget (cosine >= {artifact.budget.min_cosine:g})"
        )
    tolerance = prepared.manifest.tolerance
    return (
        f"{len(cases)} golden cases match through HTTP within atol={tolerance.atol:g} "
        f"rtol={tolerance.rtol:g} (max abs diff {worst:.3g})"
    )


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", SELF_CHECK_HEADER: token},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        raise GoldenMismatch(f"golden request {body['id']} got HTTP {error.code}: {detail}") from None


def _compare(
    case: GoldenCaseEntry, reply: dict[str, Any], expected: dict[str, np.ndarray], prepared: Prepared
) -> float:
    """The largest absolute difference on this case; raises ``GoldenMismatch`` outside tolerance or budget."""
    got = {o["name"]: o for o in reply.get("outputs", [])}
    worst = 0.0
    tolerance = prepared.manifest.tolerance
    budget = prepared.artifact.budget
    for name in case.output_names:
        reference = expected[name]
        if name not in got:
            raise GoldenMismatch(f"golden case {case.case}: the response has no output '{name}'")
        output = got[name]
        dtype = next((np.dtype(k) for k, v in DATATYPE_OF.items() if v == output["datatype"]), None)
        actual = np.asarray(output["data"], dtype=dtype).reshape(output["shape"])
        where = f"golden case {case.case}, output '{name}'"
        if actual.shape != reference.shape:
            raise GoldenMismatch(f"{where}: shape {list(actual.shape)} != reference {list(reference.shape)}")
        if reference.dtype.kind != "f":
            if budget is None and not np.array_equal(actual, reference):
                raise GoldenMismatch(f"{where}: values differ from the reference")
            continue
        a, r = actual.astype(np.float64), reference.astype(np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(r)) or not np.array_equal(
            np.isinf(a) * np.sign(a), np.isinf(r) * np.sign(r)
        ):
            raise GoldenMismatch(f"{where}: NaN/Inf differ from the reference")
        finite = np.isfinite(r)
        if not finite.any():
            continue
        diff = np.abs(a[finite] - r[finite])
        worst = max(worst, float(diff.max()))
        if budget is not None:
            cosine = _min_cosine(np.where(finite, a, 0), np.where(finite, r, 0))
            if cosine < budget.min_cosine:
                raise GoldenMismatch(
                    f"{where}: cosine {cosine:.4f} < the parity budget's {budget.min_cosine:g}"
                )
            continue
        allowed = tolerance.atol + tolerance.rtol * np.abs(r[finite])
        if (diff > allowed).any():
            raise GoldenMismatch(
                f"{where}: max abs diff {float(diff.max()):.3g} is outside atol={tolerance.atol:g} "
                f"rtol={tolerance.rtol:g}"
            )
    return worst


def _min_cosine(actual: np.ndarray, reference: np.ndarray) -> float:
    """Cosine similarity per sample (row of the leading axis), the smallest one."""
    rows_a = actual.reshape(actual.shape[0], -1) if actual.ndim > 1 else actual.reshape(1, -1)
    rows_r = reference.reshape(rows_a.shape)
    dots = (rows_a * rows_r).sum(axis=1)
    norms = np.linalg.norm(rows_a, axis=1) * np.linalg.norm(rows_r, axis=1)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 1.0)
    return float(cosines.min())


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _loopback(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _served(state: ServerState) -> int:
    metrics = state.metrics
    if metrics is None:
        return 0
    total = 0.0
    for metric in metrics.requests.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return int(total)


def _has(module: str) -> bool:
    with contextlib.suppress(ImportError):
        __import__(module)
        return True
    return False
