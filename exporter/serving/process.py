"""One server process: uvicorn on an already bound socket, the model loaded once the socket listens and
proven on the golden inputs through ``POST .../infer``, then ready; on SIGTERM, the drain.

``exporter serve`` runs one of these (``exporter.serving.server``), or with ``--workers N`` a supervisor runs
N of them on one port, a socket each (``exporter.serving.workers``). What differs is a ``Role``: how the
process turns ready (at once, or when the supervisor says every worker passed its check), where its golden
requests go, and who speaks for it on a second signal.

On SIGTERM (or Ctrl-C) ``ready`` turns 503, new requests get 503, in-flight ones finish within
``--drain-timeout-s`` (then they are cut), and the process exits 0; a second signal exits at once
(128 + the signal: 143, 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import uvicorn

from exporter.interrupts import frames_on_thread_stack
from exporter.runners.base import Runner
from exporter.serving.app import build_app
from exporter.serving.golden import golden_check
from exporter.serving.golden_generate import generation_check
from exporter.serving.limits import guarded_protocol
from exporter.serving.options import GOLDEN_FAILED, Prepared, ServeOptions
from exporter.serving.state import ServerState

__all__ = ["Outcome", "Role", "StartupGate", "run_process"]

SWITCH_INTERVAL_S = 0.001
"""How long a thread holding the GIL keeps it when another wants it (Python's default: 5 ms). The event
loop shares the GIL with the JSON threads: at 5 ms a health probe waited several turns of 5 ms."""

SHUTDOWN_GRACE_S = 1
"""uvicorn's own graceful-shutdown wait, after the drain: only requests that are not inference ones (health,
metadata) can still be running then, and they take milliseconds. ``--drain-timeout-s`` is the drain's
budget, not also uvicorn's (it used to be both, so one stalled client held shutdown for twice the time)."""

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class StartupGate(Protocol):
    """What a process does with its start-up check's outcome."""

    async def passed(self) -> bool:
        """The golden check passed: True once this process may turn ready, False if it is being stopped."""
        ...

    def ready(self, loaded_s: float, summary: str) -> None:
        """The process turned ready (``summary``: the golden check's line)."""
        ...

    def failed(self, reason: str) -> None:
        """The model failed to load or its golden check (one line); the process exits 1."""
        ...


class AloneGate:
    """The gate of a process serving on its own: ready as soon as its check passed, said in the log."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    async def passed(self) -> bool:
        return True

    def ready(self, loaded_s: float, summary: str) -> None:
        self.log(f"exporter serve: ready: loaded in {loaded_s:.2f} s; {summary}")

    def failed(self, reason: str) -> None:
        self.log(f"exporter serve: error: {reason}; not serving")


@dataclass
class Role:
    """What differs between the one process of ``exporter serve`` and one of its ``--workers``."""

    gate: StartupGate
    private: Path | None = None
    """The private copy of the checked files, removed on a second signal (None: the supervisor's)."""
    check_socket: socket.socket | None = None
    """Where the golden requests go (None: the listening socket); closed once the check is done."""
    wrap: Callable[[ASGIApp], ASGIApp] | None = None
    """Applied to the app (a worker's response header)."""
    speaks_on_second_signal: bool = True
    """False: the supervisor writes the one line for every process."""
    early_signals: list[int] = field(default_factory=list)
    """Signals that arrived before the server took them over: each is handled once it has."""


@dataclass(frozen=True)
class Outcome:
    exit: int
    cut: int
    """Requests cut by the drain timeout."""
    answered: int
    """Inference requests answered, whatever their status (every worker's, with ``--workers``)."""


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains (ready turns 503, in-flight requests finish)
    instead of closing at once, and the signal is not re-raised afterwards: a drained server exits 0.

    A second signal stops the process at once: one line, exit 128 + the signal (143 for SIGTERM), the
    private copy removed, nothing else waited for (uvicorn would cancel the requests and log tracebacks).
    """

    def __init__(self, config: uvicorn.Config, state: ServerState, role: Role) -> None:
        super().__init__(config)
        self.state = state
        self.role = role
        self.signalled = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers, with their frames on the thread's stack (see ``exporter.interrupts``)."""
        with super().capture_signals():
            frames_on_thread_stack(signal.SIGINT, signal.SIGTERM)
            for early in self.role.early_signals:
                self.handle_exit(early, None)
            yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.signalled:
            if self.role.speaks_on_second_signal:
                name = signal.Signals(sig).name
                line = f"exporter serve: second {name}: stopped at once, without draining\n"
                with contextlib.suppress(OSError):
                    os.write(2, line.encode())  # not print: the main thread may be inside a print
            if self.role.private is not None:
                shutil.rmtree(self.role.private, ignore_errors=True)
            os._exit(128 + sig)
        self.signalled = True
        if not self.state.ready:
            self.should_exit = True  # loading, checking or waiting for the other workers: nothing to drain
            return
        self.state.draining = True


def run_process(
    prepared: Prepared,
    options: ServeOptions,
    sock: socket.socket,
    *,
    load: Callable[[], Runner],
    role: Role,
) -> Outcome:
    """Serve on ``sock`` until drained (or stopped before ready); the outcome, logged by the caller."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    state = ServerState(
        prepared.signature,
        max_body_bytes=prepared.max_body_bytes,
        max_batch_size=prepared.max_batch_size,
        max_batch_delay_s=options.max_batch_delay_ms / 1000,
        body_timeout_s=options.body_timeout_s,
        docs=options.docs,
        decoder=prepared.decoder,
    )
    app: ASGIApp = build_app(state)
    if role.wrap is not None:
        app = role.wrap(app)
    server = DrainingServer(_config(app, options), state, role)
    outcome: dict[str, int] = {"exit": 0, "cut": 0}
    sockets = [sock] if role.check_socket is None else [sock, role.check_socket]
    checked_at = (role.check_socket or sock).getsockname()[:2]

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=sockets))
        helpers = [
            asyncio.create_task(
                _start(server, state, prepared, role, load=load, outcome=outcome, checked_at=checked_at)
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
        if has_module("uvloop"):
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    finally:
        state.close()
    answered = 0 if state.metrics is None else state.metrics.answered()
    return Outcome(outcome["exit"], outcome["cut"], answered)


def _config(app: ASGIApp, options: ServeOptions) -> uvicorn.Config:
    """uvicorn with the header timeout, the connection limit and no access log."""
    base: type[asyncio.Protocol]
    if has_module("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="uvloop" if has_module("uvloop") else "asyncio",
        http=guarded_protocol(base, options.header_timeout_s),
        limit_concurrency=options.max_connections,
        h11_max_incomplete_event_size=64 * 1024,
        proxy_headers=False,  # nothing here reads the client address; the middleware cost every request
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


async def _start(
    server: DrainingServer,
    state: ServerState,
    prepared: Prepared,
    role: Role,
    *,
    load: Callable[[], Runner],
    outcome: dict[str, int],
    checked_at: tuple[str, int],
) -> None:
    """Load the model once the socket listens, check it on the golden cases over HTTP, then turn ready."""
    while not server.started:
        await asyncio.sleep(0.005)
    if server.should_exit:
        return  # stopped as it started (a signal that came before the server took signals over)
    started = time.perf_counter()
    artifact = prepared.artifact
    host, port = checked_at
    url = f"http://{url_host(loopback(host))}:{port}/v2/models/{prepared.signature.name}/infer"
    try:
        runner = await asyncio.to_thread(load)
        state.attach(runner, artifact.platform)
        loaded = time.perf_counter() - started
        state.status = "checking the golden outputs"
        summary = await golden_check(
            url,
            state.token,
            folder=prepared.folder,
            manifest=prepared.manifest,
            artifact=artifact,
            signature=prepared.signature,
        )
        if prepared.decoder is not None:
            state.status = "checking the golden generation"
            generate = url.removesuffix("/infer") + "/generate"
            replayed = await generation_check(generate, state.token, prepared.decoder, artifact.lossy)
            summary = f"{summary}; {replayed}"
    except Exception as error:
        if server.should_exit:
            return  # stopped while loading or checking: the check failed because the server closed
        text = str(error).strip().splitlines()
        state.status = f"failed: {text[0] if text else type(error).__name__}"
        role.gate.failed(state.status.removeprefix("failed: "))
        outcome["exit"] = GOLDEN_FAILED
        server.should_exit = True
        return
    finally:
        if role.check_socket is not None:
            _stop_listening(server, role.check_socket)
    if not await role.gate.passed():
        return
    state.ready = True
    state.status = "ready"
    if state.metrics is not None:
        state.metrics.ready_child.set(1)
    role.gate.ready(loaded, summary)


def _stop_listening(server: uvicorn.Server, sock: socket.socket) -> None:
    """Close the listener on ``sock`` (a worker's private check port): nothing but the check may use it."""
    address = sock.getsockname()
    for listener in server.servers:
        if any(s.getsockname() == address for s in listener.sockets):
            listener.close()


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


def loopback(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def has_module(module: str) -> bool:
    with contextlib.suppress(ImportError):
        __import__(module)
        return True
    return False
