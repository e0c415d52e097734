"""Triton's generate extension for a decoder: ``POST /v2/models/{name}/generate`` (one JSON answer) and
``.../generate_stream`` (server-sent events, one ``data:`` event per token), a bare ASGI callable in front of
the rest of the app, as the infer route is.

Answers: ``{"model_name", "model_version", "id"?, "text_output"? (when the model has a tokenizer),
"output_ids": [...], "finish_reason": "stop" | "length", "prompt_tokens"}``; a stream's events carry the
token's ``output_ids: [id]``, its ``text_output`` piece and its ``index``, the last one ``finish_reason``
too. ``finish_reason`` is ``stop`` at an end-of-sequence token (which is in ``output_ids``, not in the
text), ``length`` at ``max_tokens`` or the context's end.

Each request keeps its own cache (the past tensors the last call returned) for its life and no longer.
Every model call goes through the ``ModelWorker`` (the model thread, or inline when calls are sub-ms), one
call per token, so concurrent generations take turns token by token and infer requests interleave with
them; generate requests are not batched with each other. A client that disconnects stops its generation
before the next model call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np

from exporter.hf.decoding import empty_past, step_inputs
from exporter.serving.batching import ModelWorker
from exporter.serving.decoder import DecoderServing, TextCodec, TextPieces
from exporter.serving.generate_request import GenerateRequest, parse_generate_request
from exporter.serving.infer_route import error_body
from exporter.serving.json_chunks import dumps
from exporter.serving.limits import BodyTimeout, Busy, ClientGone, read_body
from exporter.serving.protocol import RequestError
from exporter.serving.state import SELF_CHECK_HEADER, ServerState

__all__ = ["GenerateRoute", "generate_tokens"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_TOKEN = SELF_CHECK_HEADER.lower().encode()
BYTES_PER_PROMPT_TOKEN = 64
"""Body room per prompt token (JSON-escaped text or an id): a generate body is small."""


async def generate_tokens(
    worker: ModelWorker, decoder: DecoderServing, request: GenerateRequest, stopped: asyncio.Event
) -> AsyncIterator[tuple[int, str | None]]:
    """Greedy tokens after ``request.prompt``, each with its finish reason when it is the last, as
    ``exporter.hf.decoding.decode_steps`` generates them (the start-up check replays the golden ones), each
    call awaited on the model worker. Ends early, with nothing more, once ``stopped`` is set."""
    layout = decoder.layout
    ids = np.asarray([request.prompt], dtype=np.int64)
    past = empty_past(layout)
    past_length = 0
    for index in range(request.max_tokens):
        if stopped.is_set():
            return
        outputs = await worker.run(step_inputs(layout, ids, past, past_length), 1)
        token = int(np.asarray(outputs[0][0, -1], dtype=np.float32).argmax())
        past_length += ids.shape[1]
        if request.stop_at_eos and token in layout.eos_token_ids:
            yield token, "stop"
            return
        if index == request.max_tokens - 1 or past_length + 1 > layout.max_positions:
            yield token, "length"
            return
        yield token, None
        past = outputs[1:]
        ids = np.asarray([[token]], dtype=np.int64)


class GenerateRoute:
    """The served decoder's generate paths, answered here; every other request goes to ``fallback``."""

    def __init__(self, state: ServerState, decoder: DecoderServing, fallback: ASGIApp) -> None:
        name = state.signature.name
        self.state, self.decoder, self.fallback = state, decoder, fallback
        self.paths: dict[str, bool] = {}
        for base in (f"/v2/models/{name}", f"/v2/models/{name}/versions/1"):
            self.paths[f"{base}/generate"] = False
            self.paths[f"{base}/generate_stream"] = True
        self.head = {"model_name": name, "model_version": "1"}
        self.codec: TextCodec | None = decoder.codec()
        seq = state.signature.inputs[0].dims[1] if state.signature.inputs else None
        seq_max = state.signature.dim_ranges.get(seq, (1, None))[1] if isinstance(seq, str) else None
        self.max_prompt = min(decoder.layout.max_positions, seq_max or decoder.layout.max_positions)
        self.body_limit = min(state.max_body_bytes, (64 << 10) + BYTES_PER_PROMPT_TOKEN * self.max_prompt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.paths.get(scope["path"]) if scope["type"] == "http" else None
        if stream is None or scope["method"] != "POST":
            await self.fallback(scope, receive, send)
            return
        state, metrics = self.state, self.state.metrics
        assert metrics is not None
        self_check = any(k == _TOKEN and v == state.token.encode() for k, v in scope["headers"])
        if state.draining:
            await _answer(send, 503, error_body("the server is shutting down; retry on another replica"))
        elif not state.ready and not self_check:
            await _answer(send, 503, error_body(f"not ready: {state.status}"))
        else:
            state.inflight += 1
            metrics.inflight_child.inc()
            started = time.perf_counter()
            try:
                status = await self._served(scope, receive, send, stream)
            finally:
                state.inflight -= 1
                metrics.inflight_child.dec()
            metrics.latency_child.observe(time.perf_counter() - started)
            metrics.count(status)
            return
        metrics.count(503)

    async def _served(self, scope: Scope, receive: Receive, send: Send, stream: bool) -> int:
        """Read, check and answer one request; the status sent."""
        try:
            request = await self._parsed(scope, receive)
        except RequestError as error:
            await _answer(send, 400, error_body(str(error), error.field), close=error.field == "body")
            return 400
        except BodyTimeout as error:
            await _answer(send, 408, error_body(str(error), "body"), close=True)
            return 408
        except Busy as error:
            await _answer(send, 503, error_body(str(error)), close=True)
            return 503
        except ClientGone:
            return 400
        stopped = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, stopped))
        try:
            if stream:
                return await self._stream(send, request, stopped)
            return await self._whole(send, request, stopped)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _parsed(self, scope: Scope, receive: Receive) -> GenerateRequest:
        state = self.state
        assert state.budget is not None
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        async with read_body(
            receive,
            None if declared is None else declared.decode("latin-1"),
            self.body_limit,
            state.budget,
            state.body_timeout_s,
        ) as body:
            return parse_generate_request(body, self.decoder, self.codec, self.max_prompt)

    def _head(self, request: GenerateRequest) -> dict[str, Any]:
        return self.head if request.id is None else {**self.head, "id": request.id}

    async def _whole(self, send: Send, request: GenerateRequest, stopped: asyncio.Event) -> int:
        assert self.state.worker is not None
        tokens: list[int] = []
        reason: str | None = None
        try:
            async for token, finish in generate_tokens(self.state.worker, self.decoder, request, stopped):
                tokens.append(token)
                reason = finish
        except Exception as error:
            await _answer(send, 500, error_body(f"model error: {_one_line(error)}"))
            return 500
        if stopped.is_set():
            return 499  # nobody reads the answer (nginx's "client closed request", for the metrics)
        answer: dict[str, Any] = dict(self._head(request))
        if self.codec is not None:
            answer["text_output"] = self.codec.decode(tokens)
        answer.update(output_ids=tokens, finish_reason=reason, prompt_tokens=len(request.prompt))
        await _answer(send, 200, dumps(answer))
        return 200

    async def _stream(self, send: Send, request: GenerateRequest, stopped: asyncio.Event) -> int:
        """One event per token; an error after the first event is an ``{"error": ...}`` event (the status
        is sent already, as Triton's generate_stream does)."""
        assert self.state.worker is not None
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        head = self._head(request)
        pieces = TextPieces(self.codec) if self.codec is not None else None
        index = 0
        try:
            async for token, reason in generate_tokens(self.state.worker, self.decoder, request, stopped):
                event: dict[str, Any] = dict(head)
                if pieces is not None:
                    event["text_output"] = pieces.add(token, last=reason is not None)
                event.update(output_ids=[token], index=index)
                if reason is not None:
                    event["finish_reason"] = reason
                index += 1
                if stopped.is_set():
                    break
                await send({"type": "http.response.body", "body": _event(event), "more_body": True})
        except Exception as error:
            payload = _event({"error": f"model error: {_one_line(error)}"})
            await send({"type": "http.response.body", "body": payload, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 499 if stopped.is_set() else 200


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


async def _watch_disconnect(receive: Receive, stopped: asyncio.Event) -> None:
    """Set ``stopped`` when the client goes away (the body is read: the next message is the disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            stopped.set()
            return


async def _answer(send: Send, status: int, body: bytes, close: bool = False) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
