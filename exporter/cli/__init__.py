"""Command line: one module per command; each parses flags, calls the library, prints. No pipeline logic.

Exit codes: 0 success; 1 verification failed (report written); 2 bad input or usage; 3 conversion failed;
4 latency budget missed; 5 internal error (a bug in exporter; traceback in a log file); 130/143 SIGINT or
SIGTERM.

``app`` and ``main`` live in :mod:`exporter.cli._app`, ``export`` (what ``exporter export`` calls, looked up
here per call so tests can replace it) in :mod:`exporter.pipeline`. They are imported on first use (PEP 562),
as the top-level package does: the command modules import ``exporter.cli.shared``, which runs this file
first, so this file must not import them back.
"""

from __future__ import annotations

from exporter._lazy import lazy_attributes

__all__ = ["app", "export", "main"]

_HOME_OF = {"app": "exporter.cli._app", "main": "exporter.cli._app", "export": "exporter.pipeline"}


__getattr__ = lazy_attributes(__name__, _HOME_OF)
