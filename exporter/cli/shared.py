"""What every command shares: the two consoles, tables, the progress display, JSON output, the error guard."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table
from rich.text import Text

from exporter.backends.registry import backends, servable_backends, targets
from exporter.errors import UsageError, describe_failure, explain
from exporter.report.markdown import Table as RowTable
from exporter.stages.records import StageRecord, StageStatus

__all__ = [
    "RichProgress",
    "backend_help",
    "err",
    "guarded",
    "json_object",
    "out",
    "rich_table",
    "target_help",
    "write_json",
]

T = TypeVar("T")

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class RichProgress:
    """Shows the running stage as a spinner and prints each finished stage on its own line."""

    _MARKS: ClassVar[dict[StageStatus, str]] = {
        StageStatus.PASSED: "[green]ok[/]",
        StageStatus.FAILED: "[red]FAILED[/]",
        StageStatus.SKIPPED: "[yellow]skipped[/]",
        StageStatus.NOT_RUN: "[dim]not run[/]",
    }

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Status | None = None
        self.stage = ""

    def stage_started(self, stage: str) -> None:
        self.stage = stage
        self.status = self.console.status(f"[bold]{stage}[/] ...")
        self.status.start()

    def stage_finished(self, record: StageRecord) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        mark = self._MARKS[record.status]
        detail = "" if record.raised else record.detail
        peak = f"{record.peak_rss_mb / 1024:5.2f} GiB" if record.peak_rss_mb else " " * 9
        self.console.print(
            f"  {record.name:<10} {mark:<18} {record.seconds:6.2f} s {peak}  [dim]{escape(detail)}[/]",
            highlight=False,
        )

    def note(self, message: str) -> None:
        self.console.print(f"  [yellow]note:[/] {escape(message)}", highlight=False)

    def step(self, message: str, done: int, total: int) -> None:
        if self.status is not None:
            count = f" ({done}/{total})" if total else ""
            self.status.update(f"[bold]{self.stage}[/] {escape(message)}{count}")

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()


def rich_table(title: str, table: RowTable) -> Table:
    """A report table for the terminal; cells are plain text (never markup), failing rows in red."""
    headers, rows = table
    rendered = Table(title=Text(title), title_justify="left", show_lines=False)
    for header in headers:
        rendered.add_column(Text(header), overflow="fold")
    for row in rows:
        style = "red" if any(cell.startswith("FAIL") for cell in row) else None
        rendered.add_row(*(Text(cell) for cell in row), style=style)
    return rendered


def guarded(debug: bool, action: Callable[[], T]) -> T:
    """Run ``action``; an error becomes one line on stderr and its exit code (``describe_failure``), so
    every command fails alike. ``--debug`` prints the traceback and the full text of the error's causes
    (torch's own explanation) above that line; the exit code stays the same."""
    try:
        return action()
    except typer.Exit:
        raise
    except (Exception, KeyboardInterrupt) as error:
        code, line = describe_failure(error, " ".join(sys.argv[1:]))
        if debug:
            err.print("".join(traceback.format_exception(error)), highlight=False, markup=False)
            explanation = explain(error)
            if explanation:
                err.print(f"full explanation:\n{explanation}", highlight=False, markup=False)
        heading, _, rest = line.partition(": ")
        err.print(f"[red]{escape(heading)}:[/] {escape(rest)}", highlight=False, soft_wrap=True)
        raise typer.Exit(int(code)) from None


def json_object(text: str | None) -> dict[str, Any] | None:
    """``--model-kwargs`` parsed: a JSON object, or None when the flag was not given."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--model-kwargs is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UsageError("--model-kwargs must be a JSON object, e.g. '{\"width\": 16}'")
    return value


def write_json(target: Path | None, payload: Any) -> None:
    """``--json FILE`` writes the document; ``--json -`` prints it instead of the tables."""
    if target is None:
        return
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


AllowPackages = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-package",
        help="A package whose package.module:callable a recipe may name (repeatable); a recipe may always "
        "name file.py:callable in its own project and exporter.zoo, never the standard library.",
    ),
]
"""``--allow-package NAME``, the same on ``export`` and ``run``."""
DebugFlag = Annotated[
    bool,
    typer.Option("--debug", help="Show tracebacks and the full text of errors (exit codes stay the same)."),
]
"""``--debug``, the same on every command."""
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write results as JSON (- for stdout).")]
"""``--json FILE`` (``-`` prints the document instead of the tables)."""
JunitOut = Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report.")]
"""``--junit FILE``."""


def target_help() -> str:
    """``--to``'s help from the backend registry: each target and what its backends make, so a registered
    backend is listed without touching the CLI."""
    listed = []
    for target in targets():
        made = [s.help for s in backends() if s.target == target and s.build is not None and s.help]
        listed.append(f"{target} ({'; '.join(made)})" if made else target)
    return f"Target: {', '.join(listed)}, or all; repeat for several"


def backend_help(lead: str) -> str:
    """``--backend``'s help (serve, package) from the registry: every backend they can run."""
    return f"{lead}: {', '.join(servable_backends())}"
