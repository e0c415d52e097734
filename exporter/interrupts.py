"""Signals and crashes: how a run that is stopped or hits a bug ends without debris or a misleading code.

SIGTERM is treated like Ctrl-C: both raise ``Interrupted`` in the main thread, so every ``finally`` (the
staging folder's removal, the output lock's release) runs and the process exits 130 (SIGINT) or 143
(SIGTERM). A repeated signal is ignored while that cleanup runs (SIGKILL still stops the process; the next
run then removes the stale staging folder it left).

Python runs a signal handler in whatever Python code the main thread is in, and some of that code swallows
what the handler raises: a ``__del__`` or weakref finalizer run by the garbage collector (the exception is
printed, to a stderr that ``quiet`` has redirected, and dropped), or C code that clears errors. The interrupt
is therefore remembered until the process ends, and ``check_interrupted`` (called at every stage boundary
and progress step) raises it again, so a swallowed signal delays the exit instead of cancelling it.

``Interrupted`` itself, and the exit code of any interrupt, live in :mod:`exporter.errors` with every
other exception this package ends a command with; this module only raises it.

Every handler this module installs runs on the thread's own stack, not on an alternate signal stack
(``frames_on_thread_stack``): OpenVINO's CPU plugin gives the main thread an alternate stack per plugin
instance and restores the previous one when that instance dies, so after two instances die out of order
the main thread's alternate stack is memory that was unmapped and may since hold Python objects. Python
installs its handlers with ``SA_ONSTACK``, and a SIGTERM arriving then wrote its frame over that memory
and the process crashed later in the garbage collector (SIGSEGV instead of exit 143).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from exporter.errors import Interrupted, exit_code_of

__all__ = [
    "Interrupted",
    "blocked_signals",
    "check_interrupted",
    "exit_code_of",
    "frames_on_thread_stack",
    "install_signal_handlers",
    "raise_interrupted",
    "signals_handled",
]

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class _Hold:
    """While ``blocked_signals`` runs, ``signals`` collects what arrived (None: signals act at once)."""

    signals: list[int] | None = None


class _Pending:
    """The signal whose ``Interrupted`` was raised in this process (None: none was)."""

    signum: int | None = None


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """The handler: raise ``Interrupted`` (or hold the signal inside ``blocked_signals``)."""
    if _Hold.signals is not None:
        _Hold.signals.append(signum)
        return
    for handled in _HANDLED:
        signal.signal(handled, signal.SIG_IGN)  # the cleanup this starts must not be cut short
    _Pending.signum = signum
    raise Interrupted(signum)


def check_interrupted() -> None:
    """Raise ``Interrupted`` again when a signal arrived and its first ``Interrupted`` was swallowed.

    Only in the main thread, where the handler runs; elsewhere this is a no-op.
    """
    if _Pending.signum is not None and threading.current_thread() is threading.main_thread():
        raise Interrupted(_Pending.signum)


def install_signal_handlers() -> None:
    """Make SIGINT and SIGTERM raise ``Interrupted`` in this process (main thread only)."""
    _Pending.signum = None
    for handled in _HANDLED:
        signal.signal(handled, raise_interrupted)
    frames_on_thread_stack(*_HANDLED)


@contextlib.contextmanager
def signals_handled() -> Iterator[None]:
    """``install_signal_handlers`` for a block: the previous handlers and state come back after it."""
    previous = {handled: signal.getsignal(handled) for handled in _HANDLED}
    install_signal_handlers()
    try:
        yield
    finally:
        _Pending.signum = None
        for handled, handler in previous.items():
            signal.signal(handled, handler)


_SA_ONSTACK = 0x08000000


class _SigAction(ctypes.Structure):
    """glibc's ``struct sigaction`` on Linux (x86-64 and aarch64 share this layout)."""

    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


def frames_on_thread_stack(*signums: int) -> bool:
    """Clear ``SA_ONSTACK`` on the handlers now installed for ``signums``; True when none is left with it.

    The handler itself is kept (Python's C-level trampoline, which runs the Python handler later in the
    main thread); only where the kernel writes the signal frame changes. A no-op off Linux/glibc, where
    OpenVINO does not touch the alternate stack.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the symbols already loaded: libc's sigaction among them
    changed = 0
    for signum in signums:
        action = _SigAction()
        if libc.sigaction(signum, None, ctypes.byref(action)) != 0:
            continue
        if action.flags & _SA_ONSTACK:
            action.flags &= ~_SA_ONSTACK
            if libc.sigaction(signum, ctypes.byref(action), None) != 0:
                continue
        changed += 1
    return changed == len(signums)


@contextlib.contextmanager
def blocked_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so a two-step swap of folders is never cut in half.

    A flag rather than ``pthread_sigmask``: Python runs handlers in the main thread whichever thread the
    kernel delivered the signal to, and torch and ONNX Runtime keep threads that do not block it.
    """
    outer = _Hold.signals
    held: list[int] = [] if outer is None else outer
    _Hold.signals = held
    try:
        yield
    finally:
        _Hold.signals = outer
        if outer is None and held:
            raise_interrupted(held[0], None)
