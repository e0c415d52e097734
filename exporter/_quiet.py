"""Silence third-party chatter (prints, logging, C++ writes to fd 1/2) while a library call runs."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["quiet", "quiet_logs"]

_LOGGERS = (
    "torch",
    "torch.onnx",
    "torch.export",
    "torch._dynamo",
    "torch.fx",
    "onnxscript",
    "torchao",
    "root",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """What matters is recorded by the caller; the user's terminal stays readable."""
    loggers = [logging.getLogger(n if n != "root" else None) for n in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


_IMPORT_CHATTER = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Only the log warnings libraries print when a model's own code imports them (torchao's optional CUDA
    kernels, torch's pytree deprecations): the user's own prints and errors still show."""
    loggers = [logging.getLogger(name) for name in _IMPORT_CHATTER]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
