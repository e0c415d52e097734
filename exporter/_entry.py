"""The ``exporter`` command's entry point: the signal handlers first, then the CLI's imports.

Importing the CLI takes about 2 s (typer, rich, numpy, the command modules), so a Ctrl-C or SIGTERM in
that time would otherwise meet Python's defaults: a KeyboardInterrupt traceback, or death by signal. Here it
ends as one that comes later does: one line and exit 130/143.
"""

from __future__ import annotations

import sys

from exporter.errors import describe_failure
from exporter.interrupts import install_signal_handlers

__all__ = ["main"]


def main() -> None:
    try:
        install_signal_handlers()
        from exporter.cli import main as cli_main
    except KeyboardInterrupt as interrupt:
        code, line = describe_failure(interrupt, " ".join(sys.argv[1:]))
        print(line, file=sys.stderr)
        sys.exit(int(code))
    cli_main()
