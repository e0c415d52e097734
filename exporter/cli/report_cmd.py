"""``exporter report``: re-render report.md and report.html from a folder's report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from exporter.cli.shared import DebugFlag, guarded, out

__all__ = ["report_command"]


def report_command(
    folder: Annotated[Path, typer.Argument(help="An artifacts folder with a report.json.")],
    debug: DebugFlag = False,
) -> None:
    """Re-render report.md and the self-contained report.html from FOLDER/report.json (and update their
    sha256 in FOLDER/manifest.json)."""
    from exporter.report.files import rerender_reports

    for written in guarded(debug, lambda: rerender_reports(folder)):
        out.print(Text(f"wrote {written}"))
