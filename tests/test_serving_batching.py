"""Dynamic batching and the model worker (``exporter.serving.batching``), with a plain numpy model: greedy by
default (a lone request is never held), queued requests gathered into one call, outputs split back, short
calls run on the event loop and long ones on the model thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np

from exporter.serving.batching import INLINE_CALL_S, DynamicBatcher, ModelWorker
from exporter.serving.server import ServeOptions


class Model:
    """Doubles its input; records each call's rows and thread; can be held until released."""

    def __init__(self, hold: bool = False, seconds: float = 0.0) -> None:
        self.calls: list[int] = []
        self.threads: list[int] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()
        self.seconds = seconds

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.started.set()
        self.release.wait(30)
        if self.seconds:
            time.sleep(self.seconds)
        x = inputs["x"]
        self.calls.append(x.shape[0])
        self.threads.append(threading.get_ident())
        return [x * 2]


def _rows(first: int, count: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.arange(first, first + count, dtype=np.float32).reshape(count, 1)}


def frozen_clock() -> float:
    """A clock that stands still: a request waiting for a window would wait forever."""
    return 1000.0


def test_the_default_is_greedy_and_a_lone_request_is_not_held() -> None:
    default_delay_s = ServeOptions(folder=Path("unused")).max_batch_delay_ms / 1000
    assert default_delay_s == 0

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(ModelWorker(Model(), lambda *_: None), 64, default_delay_s, frozen_clock)
        batcher.start()
        try:
            return await asyncio.wait_for(batcher.submit(_rows(3)), timeout=10)
        finally:
            await batcher.stop()

    assert asyncio.run(main())[0].tolist() == [[6.0]]


def test_with_a_window_a_lone_request_waits_for_it() -> None:
    """The counterpart of the test above: with a window and a clock that stands still, the lone request is
    still waiting when the test gives up, so the test above would catch a window by default."""

    async def main() -> bool:
        batcher = DynamicBatcher(ModelWorker(Model(), lambda *_: None), 64, 0.002, frozen_clock)
        batcher.start()
        try:
            await asyncio.wait_for(batcher.submit(_rows(3)), timeout=0.3)
        except TimeoutError:
            return True
        finally:
            await batcher.stop()
        return False

    assert asyncio.run(main())


def test_a_request_that_is_not_held_runs_without_waiting_for_the_window() -> None:
    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(ModelWorker(Model(), lambda *_: None), 64, 0.002, frozen_clock)
        batcher.start()
        try:
            return await asyncio.wait_for(batcher.submit(_rows(3), hold=False), timeout=10)
        finally:
            await batcher.stop()

    assert asyncio.run(main())[0].tolist() == [[6.0]]


def test_requests_queued_while_the_model_is_busy_go_in_one_call_and_come_back_split() -> None:
    model = Model(hold=True)

    async def main() -> list[list[np.ndarray]]:
        batcher = DynamicBatcher(ModelWorker(model, lambda *_: None), 64, 0.0)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(_rows(0)))
            while not model.started.is_set():
                await asyncio.sleep(0.001)
            queued = [asyncio.ensure_future(batcher.submit(_rows(10 * i, i))) for i in (1, 2, 3)]
            await asyncio.sleep(0.01)
            model.release.set()
            return await asyncio.gather(first, *queued)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert model.calls == [1, 6]
    assert [r[0][:, 0].tolist() for r in results] == [[0.0], [20.0], [40.0, 42.0], [60.0, 62.0, 64.0]]


def test_a_model_error_reaches_every_request_of_its_batch() -> None:
    def failing(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("shape mismatch in node Reshape_3")

    async def main() -> list[BaseException | list[np.ndarray]]:
        batcher = DynamicBatcher(ModelWorker(failing, lambda *_: None), 64, 0.0)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(_rows(i)) for i in range(3)), return_exceptions=True)
        finally:
            await batcher.stop()

    outcomes = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) and "Reshape_3" in str(o) for o in outcomes)


def test_short_calls_run_on_the_event_loop_and_long_ones_on_the_model_thread() -> None:
    fast, slow = Model(), Model(seconds=3 * INLINE_CALL_S)

    async def main(model: Model) -> tuple[int, ModelWorker]:
        worker = ModelWorker(model, lambda *_: None)
        for index in range(8):
            await worker.run(_rows(index), 1)
        return threading.get_ident(), worker

    loop_thread, fast_worker = asyncio.run(main(fast))
    assert fast.threads[0] != loop_thread  # the first call's time is unknown: it goes to the thread
    assert fast.threads[1:] == [loop_thread] * 7 and fast_worker.inline
    loop_thread, slow_worker = asyncio.run(main(slow))
    assert loop_thread not in slow.threads and not slow_worker.inline
    fast_worker.close()
    slow_worker.close()


def test_observed_calls_carry_their_rows() -> None:
    observed: list[tuple[int, float]] = []

    async def main() -> None:
        worker = ModelWorker(Model(), lambda rows, seconds: observed.append((rows, seconds)))
        await worker.run(_rows(0, 5), 5)
        await worker.run(_rows(0, 2), 2)
        worker.close()

    asyncio.run(main())
    assert [rows for rows, _ in observed] == [5, 2] and all(seconds >= 0 for _, seconds in observed)


def test_requests_that_arrive_together_share_a_call_even_when_calls_run_inline() -> None:
    """Under load, requests parsed in one turn of the event loop are queued before the batcher runs, and
    go in one call. A shortcut that ran a request at once whenever nothing was queued (inline calls leave
    nothing queued) ran every request alone: 1.00 rows per call and half the requests/s at 32 clients."""
    model = Model()

    async def main() -> None:
        worker = ModelWorker(model, lambda *_: None)
        await worker.run(_rows(0), 1)  # the first call's time is known now: short, so inline from here
        assert worker.inline
        batcher = DynamicBatcher(worker, 64, 0.0)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(_rows(i)) for i in range(5)))
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert model.calls == [1, 5]


def test_an_output_without_the_batch_axis_is_refused_when_batched() -> None:
    def scalar(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.float32(inputs["x"].sum()).reshape(())]

    async def main() -> BaseException | None:
        batcher = DynamicBatcher(ModelWorker(scalar, lambda *_: None), 64, 0.0)
        batcher.start()
        try:
            await batcher.submit(_rows(1, 2))
        except RuntimeError as error:
            return error
        finally:
            await batcher.stop()
        return None

    error = asyncio.run(main())
    assert error is not None and "batch as its first axis" in str(error)
