"""The HTTP application: KServe v2 routes over one loaded model, its readiness, drain and metrics.

``ServerState`` is what the routes share with the process around them (``exporter.serving.server``): the
model (loaded after the socket listens, as Triton does, so ``live`` answers while ``ready`` waits), whether
the golden check passed, whether a SIGTERM asked to drain, and how many requests are in flight.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import secrets
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from exporter._version import __version__
from exporter.runners.base import Runner, first_useful_line
from exporter.serving.batching import DynamicBatcher, ModelWorker
from exporter.serving.json_chunks import INLINE_BYTES
from exporter.serving.limits import BINARY_HEADER, BodyBudget, BodyTimeout, Busy, byte_count, request_body
from exporter.serving.metrics import CONTENT_TYPE_LATEST, Metrics
from exporter.serving.protocol import ModelSignature, RequestError, encode_response, parse_infer_request

__all__ = ["SELF_CHECK_HEADER", "ServerState", "build_app"]

SELF_CHECK_HEADER = "X-Exporter-Self-Check"
"""Marks the start-up golden requests, the only ones answered before the server is ready."""

INLINE_OUTPUT_VALUES = 32 * 1024
"""Responses with up to this many output values are encoded on the event loop (well under a millisecond);
larger ones on the JSON threads, as large request bodies are parsed."""

_T = TypeVar("_T")


@dataclass
class ServerState:
    signature: ModelSignature
    max_body_bytes: int
    max_batch_size: int
    max_batch_delay_s: float
    body_timeout_s: float = 60.0
    docs: bool = False
    """Serve /docs and /openapi.json (off by default: the schema tells a prober every route and field)."""
    budget: BodyBudget | None = None
    """Bytes of bodies read and parsed at once (default: two bodies at the limit, at least 32 MiB)."""
    runner: Runner | None = None
    platform: str = "loading"
    """The KServe v2 ``platform`` of the loaded artifact (its ``BackendSpec.platform``)."""
    worker: ModelWorker | None = None
    batcher: DynamicBatcher | None = None
    status: str = "loading the model"
    ready: bool = False
    draining: bool = False
    inflight: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    metrics: Metrics | None = None
    json_threads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="exporter-json")
    )
    """Where large responses are encoded: off the event loop, two at a time."""

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = BodyBudget(max(2 * self.max_body_bytes, 32 << 20))

    async def off_loop(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` on a JSON thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.json_threads, functools.partial(function, *args))

    json_processes: ProcessPoolExecutor | None = None
    """Where large request bodies are parsed: another process, started on the first one."""

    async def off_process(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` in the parser process.

        Parsing a 60 MB body on a thread still took the server's GIL in 1 ms slices, and every socket call
        of the event loop then waited for a slice back: with 8 such bodies and 200 stalled connections the
        liveness probe's p99 was 183 ms (393 ms on a busier run). In a process of its own the parser
        leaves the GIL to the event loop: p99 41 ms (``benchmarks/serve_attack.py``). One process on a
        2-core machine, so a core stays with the event loop and the model.
        """
        if self.json_processes is None:
            self.json_processes = ProcessPoolExecutor(
                max(1, min(2, (os.cpu_count() or 2) - 1)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_parser_process,
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.json_processes, functools.partial(function, *args))

    def close(self) -> None:
        self.json_threads.shutdown(wait=False, cancel_futures=True)
        if self.json_processes is not None:
            self.json_processes.shutdown(wait=False, cancel_futures=True)
        if self.worker is not None:
            self.worker.close()

    @property
    def batching(self) -> bool:
        return self.signature.batch_dim is not None and self.max_batch_size > 1

    def attach(self, runner: Runner, platform: str) -> None:
        """Put a loaded model behind the routes (and the batcher, when batching)."""
        metrics = self.metrics
        self.runner, self.platform = runner, platform
        self.worker = ModelWorker(runner.run, metrics.observe_call if metrics else lambda *_: None)
        if self.batching:
            self.batcher = DynamicBatcher(self.worker, self.max_batch_size, self.max_batch_delay_s)
            self.batcher.start()

    @property
    def idle(self) -> bool:
        return self.inflight == 0 and (self.batcher is None or self.batcher.pending == 0)


def _error(status: int, message: str, field: str | None = None, close: bool = False) -> JSONResponse:
    """A JSON error; ``close`` ends the connection after it (the rest of the body may never come)."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers={"Connection": "close"} if close else None)


def build_app(state: ServerState) -> FastAPI:
    """The FastAPI app over ``state``; the routes are the Open Inference Protocol's REST ones."""
    signature = state.signature
    metrics = state.metrics = state.metrics or Metrics(signature.name)
    app = FastAPI(
        title=f"exporter: {signature.name}",
        version=__version__,
        docs_url="/docs" if state.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if state.docs else None,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return _readiness(state)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "exporter", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "1") -> JSONResponse:
        if name != signature.name or version != "1":
            return _unknown_model(name, version)
        return JSONResponse(signature.metadata(state.platform))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "1") -> JSONResponse:
        if name != signature.name or version != "1":
            return _unknown_model(name, version)
        return _readiness(state)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1") -> Response:
        if name != signature.name or version != "1":
            return _unknown_model(name, version)
        if state.draining:
            return _counted(metrics, _error(503, "the server is shutting down; retry on another replica"))
        self_check = request.headers.get(SELF_CHECK_HEADER) == state.token
        if not state.ready and not self_check:
            return _counted(metrics, _error(503, f"not ready: {state.status}"))
        state.inflight += 1
        metrics.inflight_child.inc()
        started = time.perf_counter()
        try:
            response = await _infer(state, request)
        finally:
            state.inflight -= 1
            metrics.inflight_child.dec()
        metrics.latency_child.observe(time.perf_counter() - started)
        return _counted(metrics, response)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def _parser_process() -> None:
    """A parser process leaves signals to the server: Ctrl-C reaches the whole process group, and the server
    alone decides (drain, one line); the parser must not die printing a KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _unknown_model(name: str, version: str) -> JSONResponse:
    return _error(404, f"no model '{name}' version '{version}' here")


def _readiness(state: ServerState) -> JSONResponse:
    if state.ready and not state.draining:
        return JSONResponse({"ready": True})
    reason = "draining: the server is shutting down" if state.draining else state.status
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)


def _counted(metrics: Metrics, response: Response) -> Response:
    metrics.count(response.status_code)
    return response


async def _infer(state: ServerState, request: Request) -> Response:
    signature = state.signature
    assert state.budget is not None and state.worker is not None
    try:
        header_length = _header_length(request)
        async with request_body(request, state.max_body_bytes, state.budget, state.body_timeout_s) as body:
            if len(body) <= INLINE_BYTES:
                parsed = parse_infer_request(body, signature, header_length)
            else:
                parsed = await state.off_process(parse_infer_request, body, signature, header_length)
    except RequestError as error:
        return _error(400, str(error), error.field, close=error.field in ("body", "Content-Length"))
    except BodyTimeout as error:
        return _error(408, str(error), "body", close=True)
    except Busy as error:
        return _error(503, str(error), close=True)
    except ClientDisconnect:  # gone mid-body (or cut by the drain timeout): nobody reads this answer
        return _error(400, "the client disconnected before the body ended", "body", close=True)
    try:
        if state.batcher is not None:
            outputs = await state.batcher.submit(parsed.inputs)
        else:
            rows = next(iter(parsed.inputs.values())).shape[0] if signature.batch_dim else 1
            outputs = await state.worker.run(parsed.inputs, rows)
        names = [o.name for o in signature.outputs]
        if len(outputs) != len(names):
            raise RuntimeError(f"the model returned {len(outputs)} outputs; the manifest lists {len(names)}")
    except Exception as error:
        return _error(500, f"model error: {_one_line(error)}")
    head = {"model_name": signature.name, "model_version": "1", "id": parsed.id}
    if parsed.id is None:
        del head["id"]
    if sum(int(o.size) for o in outputs) <= INLINE_OUTPUT_VALUES:
        content, binary_header = encode_response(head, names, outputs, parsed)
    else:
        content, binary_header = await state.off_loop(encode_response, head, names, outputs, parsed)
    if binary_header is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={BINARY_HEADER: str(binary_header)}
    )


def _header_length(request: Request) -> int | None:
    text = request.headers.get(BINARY_HEADER)
    return None if text is None else byte_count(BINARY_HEADER, text)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (first_useful_line(text) if text else type(error).__name__)[:300]
