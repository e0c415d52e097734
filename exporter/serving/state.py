"""What the routes share with the process around them (``exporter.serving.server``): the model (loaded
after the socket listens, as Triton does, so ``live`` answers while ``ready`` waits), whether the golden check
passed, whether a SIGTERM asked to drain, how many requests are in flight, and where work goes off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import multiprocessing
import os
import secrets
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from exporter.runners.base import Runner
from exporter.serving.batching import DynamicBatcher, ModelWorker
from exporter.serving.decoder import DecoderServing
from exporter.serving.limits import BodyBudget
from exporter.serving.metrics import Metrics
from exporter.serving.signature import ModelSignature

__all__ = ["SELF_CHECK_HEADER", "ServerState", "die_with"]

SELF_CHECK_HEADER = "X-Exporter-Self-Check"
"""Marks the start-up golden requests, the only ones answered before the server is ready."""

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
    decoder: DecoderServing | None = None
    """A decoder's generate endpoints (``exporter.serving.generate_route``), when the model is one."""
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
            _quiet_resource_tracker()
            self.json_processes = ProcessPoolExecutor(
                max(1, min(2, (os.cpu_count() or 2) - 1)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_parser_process,
                initargs=(os.getpid(),),
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.json_processes, functools.partial(function, *args))

    def close(self) -> None:
        """Stop the JSON threads, the parser process and the model thread.

        The parser pool is joined: a worker of ``--workers`` is a multiprocessing child, whose exit joins its
        child processes before the interpreter's shutdown wakes the pool's manager thread, so a pool shut
        down without waiting never got its stop sentinel and the worker hung at exit (8 times out of 8). The
        pool is idle once drained: the wait takes milliseconds.
        """
        self.json_threads.shutdown(wait=False, cancel_futures=True)
        if self.json_processes is not None:
            self.json_processes.shutdown(wait=True, cancel_futures=True)
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


_PR_SET_PDEATHSIG = 1

_TRACKER_WARNING = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    """The pool's resource tracker (started with it, with this interpreter's ``-W`` options) says nothing
    when a server stopped at once leaves the pool's semaphores to it: it removes them, and its warning
    about "leaked semaphore objects" would be the last line of a stop that already said what happened."""
    if _TRACKER_WARNING not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_WARNING)


def die_with(parent: int, sig: int) -> None:
    """Get ``sig`` when process ``parent`` dies (Linux's ``PR_SET_PDEATHSIG``), and now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _parser_process(server: int) -> None:
    """A parser process leaves signals to the server: Ctrl-C reaches the whole process group, and the server
    alone decides (drain, one line); the parser must not die printing a KeyboardInterrupt traceback. It dies
    with the server: a server stopped at once (a second signal) left it running forever, holding both ends
    of its call queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with(server, signal.SIGKILL)
