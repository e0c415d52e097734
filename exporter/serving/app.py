"""The HTTP application: KServe v2 routes over one loaded model, its readiness, drain and metrics.

Inference requests for the served model take the lean ASGI path of ``exporter.serving.infer_route``, a
decoder's generate requests that of ``exporter.serving.generate_route``; the model metadata of a decoder has
a ``generate`` entry (its endpoints, whether they take text, the context); the
rest (health, metadata, ``/metrics``, unknown models) are FastAPI routes. ``ServerState``
(``exporter.serving.state``) is what both share with the process around them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from exporter._version import __version__
from exporter.serving.decoder import DecoderServing
from exporter.serving.generate_request import DEFAULT_MAX_TOKENS
from exporter.serving.generate_route import GenerateRoute
from exporter.serving.infer_route import InferRoute
from exporter.serving.metrics import CONTENT_TYPE_LATEST, Metrics
from exporter.serving.state import SELF_CHECK_HEADER, ServerState

__all__ = ["SELF_CHECK_HEADER", "ServerState", "build_app"]


def _error(status: int, message: str, field: str | None = None, close: bool = False) -> JSONResponse:
    """A JSON error; ``close`` ends the connection after it (the rest of the body may never come)."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers={"Connection": "close"} if close else None)


def build_app(state: ServerState) -> InferRoute:
    """The ASGI app over ``state``: the Open Inference Protocol's REST routes, infer on the lean path."""
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
        extensions = ["binary_tensor_data", *(["generate"] if state.decoder is not None else [])]
        return {"name": "exporter", "version": __version__, "extensions": extensions}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "1") -> JSONResponse:
        if name != signature.name or version != "1":
            return _unknown_model(name, version)
        metadata = signature.metadata(state.platform)
        if state.decoder is not None:
            metadata["generate"] = generate_metadata(signature.name, state.decoder)
        return JSONResponse(metadata)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "1") -> JSONResponse:
        if name != signature.name or version != "1":
            return _unknown_model(name, version)
        return _readiness(state)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, version: str = "1") -> JSONResponse:
        return _unknown_model(name, version)  # the served model's own paths never get here (InferRoute)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    if state.decoder is None:
        return InferRoute(state, app)
    return InferRoute(state, GenerateRoute(state, state.decoder, app))


def generate_metadata(name: str, decoder: DecoderServing) -> dict[str, Any]:
    """The ``generate`` entry of a decoder's model metadata: its endpoints and what they take."""
    layout = decoder.layout
    return {
        "endpoints": [f"/v2/models/{name}/generate", f"/v2/models/{name}/generate_stream"],
        "text": decoder.tokenizer is not None,
        "inputs": ["text_input", "input_ids"] if decoder.tokenizer is not None else ["input_ids"],
        "decoding": "greedy",
        "max_tokens_default": DEFAULT_MAX_TOKENS,
        "context": layout.max_positions,
        "vocab_size": layout.vocab_size,
        "eos_token_ids": list(layout.eos_token_ids),
    }


def _unknown_model(name: str, version: str) -> JSONResponse:
    return _error(404, f"no model '{name}' version '{version}' here")


def _readiness(state: ServerState) -> JSONResponse:
    if state.ready and not state.draining:
        return JSONResponse({"ready": True})
    reason = "draining: the server is shutting down" if state.draining else state.status
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)
