"""What a hostile or broken client can hold of the server, and for how long.

- **Headers**: a connection must finish its request headers within ``header_timeout_s`` of connecting (or of
  its previous response); uvicorn has no such timeout (only the keep-alive one, armed after a response), so
  ``guarded_protocol`` adds it to uvicorn's HTTP protocol class.
- **Body**: an infer body must arrive within ``body_timeout_s`` (408, connection closed) and be no larger
  than the body limit (400); then it waits its turn for ``BodyBudget``: the bytes of bodies parsed at once
  are capped, since a JSON body costs several times its size in memory while it is parsed.
- **Numbers in headers**: ``Content-Length`` and ``Inference-Header-Content-Length`` are ASCII digits of
  bounded length (``"²".isdigit()`` is True, and ``int()`` of 5,000 digits raises), or a 400.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from exporter.serving.json_chunks import INLINE_BYTES
from exporter.serving.protocol import RequestError

__all__ = [
    "BINARY_HEADER",
    "BodyBudget",
    "BodyTimeout",
    "Busy",
    "ClientGone",
    "byte_count",
    "guarded_protocol",
    "read_body",
]

BINARY_HEADER = "Inference-Header-Content-Length"

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

_BYTE_COUNT = re.compile(r"[0-9]{1,18}")
"""A byte count as a header carries it: ASCII digits only, at most 18 of them (below 2**63)."""


def byte_count(header: str, text: str) -> int:
    """``text`` as a byte count, or a ``RequestError`` naming ``header``."""
    stripped = text.strip(" \t")
    if _BYTE_COUNT.fullmatch(stripped) is None:
        shown = repr(text[:20]) + ("..." if len(text) > 20 else "")
        raise RequestError(header, f"{shown} is not a byte count (1 to 18 ASCII digits)")
    return int(stripped)


class BodyTimeout(Exception):
    """The body did not arrive in time: 408, and the connection is closed (the rest may never come)."""


class Busy(Exception):
    """The body budget stayed full for the whole body timeout: 503, retry later or elsewhere."""


class BodyBudget:
    """At most ``capacity`` bytes of request bodies read and parsed at once; a request waits for room.

    A body larger than the capacity is let in alone (when nothing else holds the budget), so the body limit,
    not the budget, decides what is too large. Waiting is first come, first served.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.capacity

    async def acquire(self, size: int) -> None:
        if not self._waiting and self._fits(size):
            self.used += size
            return
        waiter = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await waiter[1]
        except BaseException:
            if waiter[1].done() and not waiter[1].cancelled():
                self.release(size)  # granted just as the wait was cancelled
            else:
                self._waiting.remove(waiter)
                self._grant()
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, future = self._waiting.popleft()
            if not future.done():
                self.used += size
                future.set_result(None)


class ClientGone(Exception):
    """The client disconnected before its body ended: nobody will read the answer."""


@asynccontextmanager
async def read_body(
    receive: Receive, declared_text: str | None, limit: int, budget: BodyBudget, timeout_s: float
) -> AsyncIterator[bytes]:
    """The body, read from the ASGI ``receive`` within ``timeout_s``; then its size is taken from the budget
    (waiting for room within the same ``timeout_s``) until the ``async with`` block, where the caller parses
    it, ends. ``declared_text`` is the request's ``Content-Length`` header, if it has one.

    The budget gates parsing, not reading: a stalled client holds only the bytes it sent (and only until
    the body timeout), so it cannot starve the others of budget; parsing is where a body costs several
    times its size.

    Raises:
        RequestError: a bad or too large ``Content-Length``, or a body that grew past ``limit``.
        BodyTimeout: the body did not arrive within ``timeout_s``.
        Busy: no room in the budget within ``timeout_s``.
        ClientGone: the client disconnected before the body ended.
    """
    declared = byte_count("Content-Length", declared_text) if declared_text is not None else None
    too_big = f"is over the server's limit of {limit} bytes (--max-body-mb); send smaller batches"
    if declared is not None and declared > limit:
        raise RequestError("body", too_big)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    message = await receive()  # the common case: the whole body is already here, no timer needed
    if message["type"] == "http.request" and not message.get("more_body", False):
        body = message.get("body", b"")
        if len(body) > limit:
            raise RequestError("body", too_big)
    else:
        try:
            async with asyncio.timeout_at(deadline):
                body = await _rest_of_body(message, receive, limit, too_big)
        except TimeoutError:
            raise BodyTimeout(f"the body did not arrive within {timeout_s:g} s (--body-timeout-s)") from None
    if len(body) <= INLINE_BYTES:  # parsed in a few ms on the event loop: never queued behind large ones
        yield body
        return
    try:
        async with asyncio.timeout_at(deadline):
            await budget.acquire(len(body))
    except TimeoutError:
        raise Busy(
            f"too many large requests at once; no room to parse this one within {timeout_s:g} s"
        ) from None
    try:
        yield body
    finally:
        budget.release(len(body))


async def _rest_of_body(message: Message, receive: Receive, limit: int, too_big: str) -> bytes:
    chunks, received = [], 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise RequestError("body", too_big)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


class _HeaderTimeout:
    """Mixed into uvicorn's HTTP protocol: close a connection that has not sent complete request headers
    within ``header_timeout_s`` of connecting, or of its last response when it started another request.

    uvicorn's own keep-alive timer covers an idle connection between requests, but is cancelled by the first
    byte of the next request, and nothing covers a fresh connection: a client that sends half a request line
    (or nothing) held the connection forever. Hooks only ``connection_made``, ``data_received`` and
    ``connection_lost``, which httptools' and h11's protocols both have; a request is under way (headers
    complete) when the protocol's ``cycle`` is set and its response is not complete.
    """

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            self._cancel_header_timer()
        else:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        cycle = getattr(self, "cycle", None)
        transport = getattr(self, "transport", None)
        if (
            (cycle is None or cycle.response_complete)
            and transport is not None
            and not transport.is_closing()
        ):
            transport.close()


def guarded_protocol(base: type[asyncio.Protocol], header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class ``base`` with the header timeout of ``_HeaderTimeout``."""
    guarded = type(
        f"HeaderTimeout{base.__name__}", (_HeaderTimeout, base), {"header_timeout_s": header_timeout_s}
    )
    return guarded
