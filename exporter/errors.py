"""One exception family for every stage, each kind carrying the exit code the CLI returns.

The CLI turns any ``ExporterError`` into one line and its ``exit_code``; anything else is a bug in exporter
(exit 5, its traceback written to a log file), so CI can tell a tool bug from a model that will not convert.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CalibrationError",
    "ConversionError",
    "ExitCode",
    "ExporterError",
    "InputSpecError",
    "LoadError",
    "RecipeError",
    "UsageError",
    "first_line",
]


class ExitCode(IntEnum):
    """Exit codes of ``exporter``: a contract that CI jobs rely on."""

    OK = 0
    VERIFICATION_FAILED = 1
    BAD_INPUT = 2
    CONVERSION_FAILED = 3
    LATENCY_REGRESSED = 4
    INTERNAL_ERROR = 5
    INTERRUPTED = 130
    TERMINATED = 143


class ExporterError(Exception):
    """Base of all errors the user can act on; ``str(error)`` is the one line shown."""

    exit_code: ExitCode = ExitCode.BAD_INPUT
    stage: str = "export"


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


class ConversionError(ExporterError):
    """A model that no exporter could convert."""

    exit_code = ExitCode.CONVERSION_FAILED
    stage = "convert"


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), for one-line reports."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[-1] if lines[0] in _GENERIC_HEADERS else lines[0]  # TorchScript puts the real error last
    return line.removeprefix(f"{type(error).__name__}: ")[:limit]


_GENERIC_HEADERS = {"The following operation failed in the TorchScript interpreter."}
