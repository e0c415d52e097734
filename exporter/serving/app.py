"""The HTTP application: KServe v2 routes over one loaded model, its readiness, drain and metrics.

Inference requests for the served model take the lean ASGI path of ``exporter.serving.infer_route``; the
rest (health, metadata, ``/metrics``, unknown models) are FastAPI routes. ``ServerState``
(``exporter.serving.state``) is what both share with the process around them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from exporter._version import __version__
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
    async def infer(name: str, version: str = "1") -> JSONResponse:
        return _unknown_model(name, version)  # the served model's own paths never get here (InferRoute)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return InferRoute(state, app)


def _unknown_model(name: str, version: str) -> JSONResponse:
    return _error(404, f"no model '{name}' version '{version}' here")


def _readiness(state: ServerState) -> JSONResponse:
    if state.ready and not state.draining:
        return JSONResponse({"ready": True})
    reason = "draining: the server is shutting down" if state.draining else state.status
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)
