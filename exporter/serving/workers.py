"""``exporter serve --workers N``: N server processes on one port, under a supervisor.

One process runs its event loop, JSON work and Python side of the model calls under one GIL, so it keeps
about one core busy; N processes (each with ``usable CPUs // N`` intra-op threads unless ``--threads``
says otherwise, per worker) use N. The supervisor loads no model and answers no request:

- **The sockets**: the supervisor checks the folder and binds the port (a bad folder or a busy port exits 2
  before anything listens), one socket per worker with ``SO_REUSEPORT`` (``options.bind_group``): the
  kernel spreads new connections over the workers by a hash of their addresses. One socket shared by all
  (uvicorn's and gunicorn's way) left the spread to whichever worker woke first in ``accept``, and half the
  starts put nearly every connection of a burst on one worker.
- **The start-up check**: each worker also listens on a loopback port of its own, sends its golden requests
  there and closes it when the check is done. A golden request sent to the shared port could be accepted by
  another worker (one that is not loaded, or already checked), and an in-process ASGI transport would skip
  the HTTP stack (uvicorn's parser, the header guard) that clients' requests go through.
- **Readiness**: a worker whose check passed waits for the supervisor's go, sent once every worker passed,
  so ``ready`` turns 200 on all of them together; the supervisor then logs one ``ready`` line. A worker
  that fails to load or check stops the start: every worker is stopped and the exit code is 1.
- **Signals**: workers leave the terminal's process group at start, so Ctrl-C reaches only the supervisor,
  which forwards each SIGINT/SIGTERM it gets to every worker, once: the first drains them all (exit 0 when
  all drained), a second stops them at once, the supervisor with them (128 + the signal). Workers die with
  the supervisor (``PR_SET_PDEATHSIG``: a killed supervisor leaves them a SIGTERM, so they drain and exit).
- **A worker that dies** (killed, crashed) is not restarted: the supervisor logs one line, drains the others
  and exits 1, as one process that crashed exits, for the orchestrator that restarts the server to see. A
  restart inside would hide a crash loop (a poison request, memory exhausted) behind a server that looks
  alive while part of its capacity keeps starting.
- **Metrics**: the supervisor makes a private folder for the workers' metric files (``metrics``), so any
  worker's ``/metrics`` shows the sums over all; the final line's count reads the same files.

The worker's side (its link to the supervisor, its process group, its response header) is
``exporter.serving.worker_side``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from exporter.serving.metrics import MULTIPROCESS_FOLDER, answered_in
from exporter.serving.options import GOLDEN_FAILED

__all__ = ["Supervised", "run_workers"]

KILL_AFTER_S = 10.0
"""After a second signal, how long a worker may take to exit before it is killed (it exits at once unless
it is stuck); after a first one or a failure, the drain's budget plus this: a worker stuck at exit is
killed (one line, exit 1) instead of holding the supervisor forever."""

_HANDLED = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Supervised:
    exit: int
    cut: int
    """Requests cut by the drain timeout, over every worker."""
    answered: int
    """Inference requests answered by every worker."""


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    link: Connection
    stage: str = "starting"
    """starting, checked, ready, exited."""
    listening: bool = True
    sent: int = 0
    """How many of the supervisor's forwarded signals this worker got."""
    cut: int = 0
    loaded_s: float = 0.0
    summary: str = ""

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


@dataclass
class _Supervisor:
    count: int
    log: Callable[[str], None]
    metrics: Path
    patience_s: float
    workers: list[_Worker] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    """The signals the supervisor got."""
    forwarded: list[int] = field(default_factory=list)
    """The signals every worker gets, in order: the supervisor's, and a SIGTERM when one worker failed."""
    failed: bool = False
    spoke_of_second: bool = False
    kill_at: float | None = None

    @property
    def stopping(self) -> bool:
        return bool(self.forwarded)

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        """Forward the signal to every worker (the first drains them, the second stops them at once)."""
        self.signals.append(sig)
        self._forward(sig)
        self._kill_after(KILL_AFTER_S if len(self.signals) > 1 else self.patience_s + KILL_AFTER_S)

    def _forward(self, sig: int) -> None:
        self.forwarded.append(sig)
        self.catch_up()

    def catch_up(self) -> None:
        """Send every live worker the forwarded signals it did not get yet (one started as a signal came).

        A signal arriving in here runs this again: each signal is claimed (``sent``) before it is sent, so
        none is sent twice.
        """
        for worker in self.workers:
            while worker.stage != "exited" and worker.sent < len(self.forwarded):
                sig = self.forwarded[worker.sent]
                worker.sent += 1
                if worker.process.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, sig)

    def _kill_after(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)

    def stop_all(self, reason: str) -> None:
        """One worker failed or died: say so and drain the others; the exit code is 1."""
        self.log(f"exporter serve: error: {reason}; {'stopping' if self.stopping else 'not serving'}")
        self.failed = True
        if not self.stopping:
            self._forward(signal.SIGTERM)
            self._kill_after(self.patience_s + KILL_AFTER_S)

    def supervise(self) -> None:
        """Until every worker exited: relay their messages, notice their exits."""
        while any(w.stage != "exited" for w in self.workers):
            links = [w.link for w in self.workers if w.listening]
            sentinels = [w.process.sentinel for w in self.workers if w.stage != "exited"]
            for item in wait([*links, *sentinels], timeout=0.2):
                for worker in self.workers:
                    if item is worker.link and worker.listening:
                        self._receive(worker)
                    elif item == worker.process.sentinel and worker.stage != "exited":
                        self._exited(worker)
            if len(self.signals) > 1 and not self.spoke_of_second:
                self.spoke_of_second = True
                name = signal.Signals(self.signals[-1]).name
                self.log(f"exporter serve: second {name}: every worker stopped at once, without draining")
            if self.kill_at is not None and time.monotonic() > self.kill_at:
                self.kill_at = None
                for worker in self.workers:
                    if worker.stage != "exited":
                        self.log(f"exporter serve: error: {worker.name} did not stop in time; killed")
                        worker.process.kill()

    def _receive(self, worker: _Worker) -> None:
        try:
            kind, *rest = worker.link.recv()
        except (EOFError, OSError):
            worker.listening = False
            return
        if kind == "log":
            self.log(
                f"exporter serve: worker {worker.index}: {str(rest[0]).removeprefix('exporter serve: ')}"
            )
        elif kind == "checked":
            worker.stage = "checked"
            if not self.stopping and all(w.stage == "checked" for w in self.workers):
                for each in self.workers:
                    with contextlib.suppress(OSError):
                        each.link.send("go")
        elif kind == "ready":
            worker.stage, worker.loaded_s, worker.summary = "ready", float(rest[0]), str(rest[1])
            if all(w.stage == "ready" for w in self.workers):
                slowest = max(w.loaded_s for w in self.workers)
                self.log(
                    f"exporter serve: ready: {self.count} workers, each loaded in {slowest:.2f} s at most; "
                    f"{worker.summary} (in every worker)"
                )
        elif kind == "failed":
            self.stop_all(f"{worker.name}: {rest[0]}")
        elif kind == "stopped":
            worker.cut = int(rest[1])

    def _exited(self, worker: _Worker) -> None:
        worker.process.join()
        with contextlib.suppress(OSError):
            os.killpg(worker.process.pid or 0, signal.SIGKILL)  # what it left in its group: see below
        while worker.listening and worker.link.poll():
            self._receive(worker)  # what it said last: its failure, its cut count
        worker.stage = "exited"
        with contextlib.suppress(OSError):
            mark_process_dead(worker.process.pid, str(self.metrics))
        code = worker.process.exitcode or 0
        if not self.stopping:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
            self.stop_all(f"{worker.name} {how}")
        elif code not in (0, GOLDEN_FAILED) and abs(code) % 128 not in self.forwarded:
            self.failed = True  # killed because it did not stop, or crashed while stopping

    def exit_code(self) -> int:
        if len(self.signals) > 1:
            return 128 + self.signals[-1]
        return GOLDEN_FAILED if self.failed else 0


# Why a worker's process group is killed once it exited: its parser processes (``ServerState.off_process``)
# are in that group, and a worker that exits at once (a second signal) or is killed leaves them behind,
# waiting forever on a queue whose both ends they hold. A drained worker has stopped them itself; then the
# group is empty and this finds nothing.


def run_workers(
    count: int,
    target: Callable[..., None],
    args: tuple[Any, ...],
    *,
    log: Callable[[str], None],
    patience_s: float,
) -> Supervised:
    """Start ``count`` processes running ``target(index, link, supervisor_pid, *args)`` (``link``: the
    worker's ``Connection``, for a ``WorkerLink``), relay them until every one exited, and say how it went.

    ``args`` are pickled for each worker (a socket among them is passed as a file descriptor);
    ``patience_s``: how long workers may take to drain (after a signal, or one of them failing) before they
    are killed.
    """
    metrics = Path(tempfile.mkdtemp(prefix="exporter-serve-metrics-"))
    supervisor = _Supervisor(count, log, metrics, patience_s)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in _HANDLED}
    context = multiprocessing.get_context("spawn")
    resource_tracker.ensure_running()  # started inside the first start(), it would unblock what _held blocks
    try:
        with _environment(MULTIPROCESS_FOLDER, str(metrics)):
            for index in range(1, count + 1):
                if supervisor.stopping:
                    break
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=target, args=(index, theirs, os.getpid(), *args), name=f"exporter-serve-{index}"
                )
                with _held(_HANDLED):
                    process.start()
                theirs.close()
                supervisor.workers.append(_Worker(index, process, ours))
                supervisor.catch_up()
        supervisor.supervise()
        cut = sum(w.cut for w in supervisor.workers)
        return Supervised(supervisor.exit_code(), cut, answered_in(metrics))
    finally:
        for worker in supervisor.workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.link.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics, ignore_errors=True)


@contextlib.contextmanager
def _held(signals: tuple[int, ...]) -> Iterator[None]:
    """Block ``signals`` while a worker starts: it inherits the mask, and unblocks them once it has left the
    terminal's process group and installed its handlers (``WorkerLink``). A Ctrl-C that reaches it before
    then waits, merged with the one the supervisor forwards (a blocked signal is pending at most once), and
    the worker sees one signal, not a KeyboardInterrupt in the middle of its imports."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment for the block (what the workers started in it inherit)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
