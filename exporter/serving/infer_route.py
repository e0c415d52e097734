"""The hot path: ``POST /v2/models/{name}/infer`` as a bare ASGI callable in front of the FastAPI app.

Every inference request used to go through FastAPI's router, dependency solver and ``Request``/``Response``
objects: 14-16 % of the server's samples on the digits CNN, for a route whose inputs are three headers and
a body. Here the two infer paths of the served model are matched by one set lookup; the body is read from
``receive``, parsed and checked exactly as before (``parse_infer_request``), and the answer is sent with
pre-built headers. Everything else (health, metadata, ``/metrics``, unknown models, other methods) falls
through to FastAPI, whose routes answer as they always did.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from exporter.runners.base import first_useful_line
from exporter.serving.json_chunks import INLINE_BYTES, dumps
from exporter.serving.limits import (
    BINARY_HEADER,
    BodyTimeout,
    Busy,
    ClientGone,
    byte_count,
    read_body,
)
from exporter.serving.protocol import InferRequest, RequestError, encode_response, parse_infer_request
from exporter.serving.state import SELF_CHECK_HEADER, ServerState

__all__ = ["InferRoute", "error_body"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INLINE_OUTPUT_VALUES = 256 * 1024
"""Responses with up to this many output values are encoded on the event loop (orjson: about 5 ms at
most); larger ones on the JSON threads, in slices."""

_JSON = [(b"content-type", b"application/json")]
_BINARY = [(b"content-type", b"application/octet-stream")]
_CLOSE = (b"connection", b"close")
_WANTED = {
    b"content-length": "content-length",
    BINARY_HEADER.lower().encode(): "binary",
    SELF_CHECK_HEADER.lower().encode(): "token",
}


class Answer:
    """A response to send: status, body and the headers beyond ``content-length``."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.body, self.headers = status, body, headers


def error_body(message: str, field: str | None = None) -> bytes:
    """The JSON of an error answer: ``{"error": ..., "field": ...}`` (``field`` when one part is wrong)."""
    return dumps({"error": message} if field is None else {"error": message, "field": field})


def _error(status: int, message: str, field: str | None = None, close: bool = False) -> Answer:
    """A JSON error; ``close`` ends the connection after it (the rest of the body may never come)."""
    return Answer(status, error_body(message, field), [*_JSON, _CLOSE] if close else _JSON)


class InferRoute:
    """The served model's infer paths, answered here; every other request goes to ``fallback``."""

    def __init__(self, state: ServerState, fallback: ASGIApp) -> None:
        name = state.signature.name
        self.state = state
        self.fallback = fallback
        self.paths = frozenset({f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/1/infer"})
        self.names = [o.name for o in state.signature.outputs]
        self.head = {"model_name": name, "model_version": "1"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.fallback(scope, receive, send)
            return
        answer = await self.answer(scope, receive)
        headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def answer(self, scope: Scope, receive: Receive) -> Answer:
        """The answer to one infer request, counted in the metrics (and timed, when it was served)."""
        state = self.state
        metrics = state.metrics
        assert metrics is not None
        found = _headers(scope)
        self_check = found.get("token") == state.token.encode()
        if state.draining:
            answer = _error(503, "the server is shutting down; retry on another replica")
        elif not state.ready and not self_check:
            answer = _error(503, f"not ready: {state.status}")
        else:
            state.inflight += 1
            metrics.inflight_child.inc()
            started = time.perf_counter()
            try:
                answer = await self._served(found, receive, self_check)
            except Exception as error:  # a bug here must not become uvicorn's traceback and a bare 500
                answer = _error(500, f"server error: {_one_line(error)}")
            finally:
                state.inflight -= 1
                metrics.inflight_child.dec()
            metrics.latency_child.observe(time.perf_counter() - started)
        metrics.count(answer.status)
        return answer

    async def _served(self, found: dict[str, bytes], receive: Receive, self_check: bool) -> Answer:
        state = self.state
        try:
            parsed = await self._parsed(found, receive)
        except RequestError as error:
            return _error(400, str(error), error.field, close=error.field in ("body", "Content-Length"))
        except BodyTimeout as error:
            return _error(408, str(error), "body", close=True)
        except Busy as error:
            return _error(503, str(error), close=True)
        except ClientGone:  # gone mid-body (or cut by the drain timeout): nobody reads this answer
            return _error(400, "the client disconnected before the body ended", "body", close=True)
        assert state.worker is not None
        try:
            if state.batcher is not None:
                outputs = await state.batcher.submit(parsed.inputs, hold=not self_check)
            else:
                rows = next(iter(parsed.inputs.values())).shape[0] if state.signature.batch_dim else 1
                outputs = await state.worker.run(parsed.inputs, rows)
            if len(outputs) != len(self.names):
                raise RuntimeError(
                    f"the model returned {len(outputs)} outputs; the manifest lists {len(self.names)}"
                )
        except Exception as error:
            return _error(500, f"model error: {_one_line(error)}")
        head = self.head if parsed.id is None else {**self.head, "id": parsed.id}
        if sum(int(o.size) for o in outputs) <= INLINE_OUTPUT_VALUES:
            content, binary_header = encode_response(head, self.names, outputs, parsed)
        else:
            content, binary_header = await state.off_loop(encode_response, head, self.names, outputs, parsed)
        if binary_header is None:
            return Answer(200, content, _JSON)
        return Answer(200, content, [*_BINARY, (BINARY_HEADER.lower().encode(), str(binary_header).encode())])

    async def _parsed(self, found: dict[str, bytes], receive: Receive) -> InferRequest:
        state = self.state
        assert state.budget is not None
        binary_text = found.get("binary")
        header_length = (
            None if binary_text is None else byte_count(BINARY_HEADER, binary_text.decode("latin-1"))
        )
        declared = found.get("content-length")
        async with read_body(
            receive,
            None if declared is None else declared.decode("latin-1"),
            state.max_body_bytes,
            state.budget,
            state.body_timeout_s,
        ) as body:
            if len(body) <= INLINE_BYTES:
                return parse_infer_request(body, state.signature, header_length)
            return await state.off_process(parse_infer_request, body, state.signature, header_length)


def _headers(scope: Scope) -> dict[str, bytes]:
    """The first value of each header the route reads (names arrive lower-cased from the server)."""
    found: dict[str, bytes] = {}
    for name, value in scope["headers"]:
        key = _WANTED.get(name)
        if key is not None and key not in found:
            found[key] = value
    return found


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (first_useful_line(text) if text else type(error).__name__)[:300]
