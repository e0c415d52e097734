"""One exception family for every stage, each kind carrying the exit code the CLI returns.

The CLI turns any ``ExporterError`` into one line and its ``exit_code``; a SIGINT or SIGTERM (``Interrupted``,
raised by :mod:`exporter.interrupts`' handler) exits 130/143; anything else is a bug in exporter (exit 5,
its traceback written to a log file), so CI can tell a tool bug from a model that will not convert.
``describe_failure`` is that mapping, shared by the CLI and ``exporter run``'s per-recipe results.
"""

from __future__ import annotations

import signal
import tempfile
import time
import traceback
from enum import IntEnum
from pathlib import Path

__all__ = [
    "CalibrationError",
    "ConversionError",
    "ExitCode",
    "ExporterError",
    "InputSpecError",
    "Interrupted",
    "LoadError",
    "RecipeError",
    "StorageError",
    "UsageError",
    "describe_failure",
    "describe_internal_error",
    "exit_code_of",
    "explain",
    "first_line",
    "full_text",
    "write_crash_log",
]


class ExitCode(IntEnum):
    """Exit codes of ``exporter``: a contract that CI jobs rely on."""

    OK = 0
    VERIFICATION_FAILED = 1
    BAD_INPUT = 2
    CONVERSION_FAILED = 3
    LATENCY_REGRESSED = 4
    INTERNAL_ERROR = 5
    PARTIAL_EXPORT = 6
    """Some targets failed to convert; the others were verified and written (the report says why)."""
    INTERRUPTED = 130
    TERMINATED = 143


class ExporterError(Exception):
    """Base of all errors the user can act on; ``str(error)`` is the one line shown."""

    exit_code: ExitCode = ExitCode.BAD_INPUT
    stage: str = "export"

    def __init__(self, *args: object, details: str | None = None) -> None:
        super().__init__(*args)
        self.details = details
        """The full text behind the one line (torch's own explanation), when it was not raised ``from``."""


class UsageError(ExporterError):
    """Bad command-line usage: conflicting flags, an output folder in the way, a bad model reference."""

    stage = "usage"


class InputSpecError(ExporterError):
    """An input spec (``NAME:DTYPE:DIMS[:LOW..HIGH]``) that cannot be parsed or does not fit the model."""

    stage = "inputs"


class RecipeError(ExporterError):
    """A recipe file that is missing, not TOML, or fails validation."""

    stage = "recipe"


class LoadError(ExporterError):
    """A checkpoint that is missing, unreadable, untrusted or does not fit the model."""

    stage = "load"


class CalibrationError(ExporterError):
    """Calibration or evaluation data that is missing, unreadable or does not fit the input spec."""

    stage = "calibration"


class StorageError(ExporterError):
    """The disk would not take the artifacts: full, read-only, not writable, or a file in the way. The
    user's environment, not a bug (exit 5) nor a model that will not convert (exit 3)."""

    stage = "write"


class ConversionError(ExporterError):
    """A model that no exporter could convert."""

    exit_code = ExitCode.CONVERSION_FAILED
    stage = "convert"


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM turned into an exception (raised by :mod:`exporter.interrupts`' handler);
    ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.TERMINATED if self.signum == signal.SIGTERM else ExitCode.INTERRUPTED


def exit_code_of(interrupt: KeyboardInterrupt) -> ExitCode:
    """130 for Ctrl-C (a plain ``KeyboardInterrupt`` too), 143 for SIGTERM."""
    return interrupt.exit_code if isinstance(interrupt, Interrupted) else ExitCode.INTERRUPTED


def describe_failure(error: BaseException, command: str) -> tuple[ExitCode, str]:
    """The exit code and the one line to show for an exception that ended ``command``.

    One mapping for every command, so ``exporter export`` and a recipe of ``exporter run`` report the same
    failure alike: an ``ExporterError`` is the user's to fix (its own exit code); SIGINT/SIGTERM exit
    130/143; anything else is a bug in exporter: exit 5, its traceback written to a log file that the line
    names. The line's text before the first ``": "`` is its heading (the CLI shows it in red).
    """
    if isinstance(error, ExporterError):
        return error.exit_code, f"error ({error.stage}): {error}"
    if isinstance(error, KeyboardInterrupt):
        code = exit_code_of(error)
        what = "terminated (SIGTERM)" if code is ExitCode.TERMINATED else "interrupted"
        return code, f"{what}: nothing was written"
    return ExitCode.INTERNAL_ERROR, describe_internal_error(error, write_crash_log(error, command))


def write_crash_log(error: BaseException, command: str) -> Path:
    """Write ``error``'s traceback to a new log file in the temp folder and return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the file must outlive this function
        "w", prefix=f"exporter-internal-error-{stamp}-", suffix=".log", delete=False
    )
    with handle:
        handle.write(f"exporter {command}: internal error (a bug in exporter)\n\n")
        handle.write("".join(traceback.format_exception(error)))
    return Path(handle.name)


def describe_internal_error(error: BaseException, log: Path) -> str:
    """The one line a user sees for a bug in exporter."""
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return (
        f"internal error (a bug in exporter, not in your model): {detail}; traceback written to {log} "
        "(attach it to a bug report; --debug shows it here)"
    )


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), for one-line reports."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[-1] if lines[0] in _GENERIC_HEADERS else lines[0]  # TorchScript puts the real error last
    return line.removeprefix(f"{type(error).__name__}: ")[:limit]


def full_text(error: BaseException, limit: int = 6000) -> str | None:
    """``error``'s own whole message and its causes' (``explain``), for a report's detail; None when the
    first line already says everything."""
    own = str(error).strip()
    parts = [f"{type(error).__name__}: {own}" if own else type(error).__name__, explain(error, limit) or ""]
    text = "\n\n".join(part for part in parts if part)
    if "\n" not in text and len(text) <= 300:
        return None
    return text if len(text) <= limit else f"{text[: limit - 20]}\n... (cut at {limit} chars)"


def explain(error: BaseException, limit: int = 6000) -> str | None:
    """The full text of what caused ``error``: each exception it was raised ``from``, whole, so torch's own
    explanation and its suggested fix reach the report and ``--debug`` when the one-line message is cut.
    None when the error has no cause with more to say than its first line."""
    if isinstance(error, ExporterError) and error.details:
        return error.details if len(error.details) <= limit else f"{error.details[: limit - 20]}\n... (cut)"
    parts: list[str] = []
    seen: set[int] = set()
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    while cause is not None and id(cause) not in seen and len(parts) < 4:
        seen.add(id(cause))
        text = str(cause).strip()
        if text and not any(text in part for part in parts):  # torch re-raises its cause's text whole
            parts.append(f"{type(cause).__name__}: {text}")
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    if not parts:
        return None
    text = "\n\n".join(parts)
    if "\n" not in text and len(text) <= 300:
        return None
    return text if len(text) <= limit else f"{text[: limit - 20]}\n... (cut at {limit} chars)"


_GENERIC_HEADERS = {"The following operation failed in the TorchScript interpreter."}
