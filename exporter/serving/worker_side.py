"""A worker's side of ``exporter serve --workers N`` (``exporter.serving.workers``): its link to the
supervisor, its own process group, its death with the supervisor, and the header naming it on its responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from exporter.serving.state import die_with

__all__ = ["WORKER_HEADER", "WorkerLink", "with_worker_header"]

WORKER_HEADER = "X-Exporter-Worker"
"""On every response of a worker: its pid (which process answered, for a client, a log or a test)."""

_HANDLED = (signal.SIGINT, signal.SIGTERM)

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class WorkerLink:
    """A worker's end of its pipe to the supervisor: its log lines, its start-up outcome, the go to turn
    ready, and the outcome it stopped with. It is the worker's ``StartupGate``."""

    def __init__(self, connection: Connection, index: int, supervisor: int) -> None:
        self.connection = connection
        self.index = index
        self.early_signals: list[int] = []
        os.setpgrp()
        for handled in _HANDLED:
            signal.signal(handled, self._early)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)  # blocked by the supervisor until now
        _die_with(supervisor)

    def _early(self, sig: int, frame: FrameType | None) -> None:
        self.early_signals.append(sig)

    def _send(self, *message: object) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(message)

    def log(self, line: str) -> None:
        self._send("log", line)

    async def passed(self) -> bool:
        self._send("checked")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()

        def readable() -> None:
            try:
                message = self.connection.recv()
            except (EOFError, OSError):
                message = None
            if not answer.done():
                answer.set_result(message == "go")

        loop.add_reader(self.connection.fileno(), readable)
        try:
            return await answer
        finally:
            loop.remove_reader(self.connection.fileno())

    def ready(self, loaded_s: float, summary: str) -> None:
        self._send("ready", loaded_s, summary)

    def failed(self, reason: str) -> None:
        self._send("failed", reason)

    def stopped(self, exit_code: int, cut: int) -> None:
        self._send("stopped", exit_code, cut)
        self.connection.close()


def _die_with(supervisor: int) -> None:
    """Get SIGTERM when the supervisor dies, and now if it already has."""
    die_with(supervisor, signal.SIGTERM)


def with_worker_header(app: ASGIApp) -> ASGIApp:
    """``app``, with ``X-Exporter-Worker: <pid>`` on every HTTP response."""
    header = (WORKER_HEADER.lower().encode(), str(os.getpid()).encode())

    async def tagged(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await app(scope, receive, send_tagged)

    return tagged
