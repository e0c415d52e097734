"""Dynamic batching, as Triton's dynamic batcher does it: requests whose non-batch dims match are gathered
for up to ``max_delay`` after the oldest one arrived (or until ``max_rows``), run as one model call, and
the outputs split back along the batch axis.

Model calls run one at a time: the runtime's intra-op thread pool is the parallelism, and two concurrent
calls on a small machine only fight over its cores. A call runs on a worker thread, so the event loop keeps
reading requests meanwhile, unless calls have been taking less than ``INLINE_CALL_S``: then it runs on the
event loop itself. Handing a sub-millisecond call to a thread and its result back costs about as much as
the call (two wake-ups, a GIL hand-over each way, the loop's self-pipe), and under load the result waits
behind every connection the loop is serving: on the digits CNN at 32 clients the inline call gave 13 % more
requests/s and a p99 of 3.0 ms instead of 5.1 ms; on the tiny encoder (2-4 ms calls) it gained nothing.

With ``max_delay`` 0 (the default) batching is greedy, as Triton's dynamic batcher by default: the model
runs as soon as it is free, on whatever requests are queued; a lone request is never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["INLINE_CALL_S", "DynamicBatcher", "ModelWorker"]

Outputs = list[np.ndarray]

INLINE_CALL_S = 0.001
"""Model calls whose recent mean time is below this run on the event loop instead of the model thread."""

_SMOOTHING = 0.2
"""Weight of the newest call in the running mean of call times."""


class ModelWorker:
    """Runs ``call`` on one dedicated thread, so the event loop keeps answering while the model works."""

    def __init__(
        self, call: Callable[[dict[str, np.ndarray]], Outputs], observe: Callable[[int, float], None]
    ):
        self._call = call
        self._observe = observe
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.busy = 0
        self.mean_call_s = float("inf")
        """Running mean of call times; infinite until the first call, which runs on the thread."""

    def _timed(self, inputs: dict[str, np.ndarray], rows: int) -> Outputs:
        started = time.perf_counter()
        try:
            return self._call(inputs)
        finally:
            seconds = time.perf_counter() - started
            mean = self.mean_call_s
            self.mean_call_s = seconds if mean == float("inf") else mean + _SMOOTHING * (seconds - mean)
            self._observe(rows, seconds)

    @property
    def inline(self) -> bool:
        """Whether the next call runs on the event loop (calls have been short: see the module)."""
        return self.mean_call_s < INLINE_CALL_S

    async def run(self, inputs: dict[str, np.ndarray], rows: int) -> Outputs:
        if self.inline and not self.busy:
            return self._timed(inputs, rows)
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, inputs, rows)
        finally:
            self.busy -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass
class _Waiting:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple[tuple[str, tuple[int, ...]], ...]
    future: asyncio.Future[Outputs]
    arrived: float
    hold: bool = True
    """False: the group it is in runs without waiting for the window (the start-up golden requests)."""


class DynamicBatcher:
    """Gathers small requests into one model call along axis 0 of every input and output."""

    def __init__(
        self,
        worker: ModelWorker,
        max_rows: int,
        max_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.worker = worker
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, inputs: dict[str, np.ndarray], hold: bool = True) -> Outputs:
        """The outputs of ``inputs``, run with the requests that fit with them; ``hold=False`` runs the
        group without waiting for the window (the golden check sends its cases one by one: with a 5 s
        window, start-up took 5 cases x 5 s)."""
        rows = next(iter(inputs.values())).shape[0]
        key = tuple(sorted((name, array.shape[1:]) for name, array in inputs.items()))
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(inputs, rows, key, future, self.clock(), hold))
        self._arrived.set()
        return await future

    @staticmethod
    def _split(outputs: Outputs, rows: list[int]) -> list[Outputs]:
        """``outputs`` cut along axis 0 into pieces of ``rows`` rows each."""
        total = sum(rows)
        if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
            raise RuntimeError("an output does not have the batch as its first axis; cannot split a batch")
        if len(rows) == 1:
            return [outputs]
        pieces, start = [], 0
        for count in rows:
            pieces.append([o[start : start + count] for o in outputs])
            start += count
        return pieces

    async def _loop(self) -> None:
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            group = await self._gather()
            await self._run(group)

    async def _gather(self) -> list[_Waiting]:
        """The oldest request and those that fit with it, once full or its delay is up."""
        first = self._waiting[0]
        deadline = first.arrived + self.max_delay_s
        while True:
            group = self._fitting(first)
            remaining = deadline - self.clock()
            full = sum(w.rows for w in group) >= self.max_rows
            if full or remaining <= 0 or not all(w.hold for w in group):
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        for waiting in group:
            self._waiting.remove(waiting)
        return group

    def _fitting(self, first: _Waiting) -> list[_Waiting]:
        group, rows = [first], first.rows
        for waiting in self._waiting:
            if waiting is first or waiting.key != first.key or rows + waiting.rows > self.max_rows:
                continue
            group.append(waiting)
            rows += waiting.rows
        return group

    async def _run(self, group: list[_Waiting]) -> None:
        group = [w for w in group if not w.future.done()]  # a client that went away
        if not group:
            return
        if len(group) == 1:
            inputs = group[0].inputs
        else:
            inputs = {name: np.concatenate([w.inputs[name] for w in group]) for name in group[0].inputs}
        try:
            pieces = self._split(
                await self.worker.run(inputs, sum(w.rows for w in group)), [w.rows for w in group]
            )
        except Exception as error:
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        for waiting, piece in zip(group, pieces, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(piece)
