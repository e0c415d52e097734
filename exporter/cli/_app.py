"""The typer app: every command module registered under its name, and the console-script entry point."""

from __future__ import annotations

import typer

from exporter.cli.export_cmd import export_command
from exporter.cli.inspect_cmd import inspect_command
from exporter.cli.package_cmd import package_command
from exporter.cli.recipes_cmd import recipes_command
from exporter.cli.report_cmd import report_command
from exporter.cli.run_cmd import run_command
from exporter.cli.serve_cmd import serve_command
from exporter.cli.verify_cmd import verify_command
from exporter.interrupts import install_signal_handlers

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: rich markup would eat their "[default: ...]"
    no_args_is_help=True,
    help="Turn a trained PyTorch model into verified, benchmarked deployment artifacts.",
)


@app.callback()
def _root() -> None:
    """Turn a trained PyTorch model into verified, benchmarked deployment artifacts."""


for _name, _command in (
    ("export", export_command),
    ("verify", verify_command),
    ("run", run_command),
    ("recipes", recipes_command),
    ("report", report_command),
    ("inspect", inspect_command),
    ("serve", serve_command),
    ("package", package_command),
):
    app.command(_name)(_command)


def main() -> None:
    """Console-script entry point: SIGTERM stops a run as Ctrl-C does (exit 143, nothing left behind)."""
    install_signal_handlers()
    app(prog_name="exporter")
