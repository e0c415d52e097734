"""``exporter run``: export and gate every recipe, one table and one exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from exporter.cli.shared import (
    AllowPackages,
    DebugFlag,
    JsonOut,
    JunitOut,
    err,
    guarded,
    out,
    rich_table,
    write_json,
)
from exporter.errors import UsageError
from exporter.report.markdown import Table as RowTable

__all__ = ["run_command"]


def run_command(
    paths: Annotated[list[Path], typer.Argument(help="Recipe files or folders of recipes.")],
    out_root: Annotated[Path, typer.Option("--out", help="Parent folder of each recipe's artifacts.")] = Path(
        "artifacts"
    ),
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Recipes run in parallel processes.")] = 1,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, max=4096, help="Threads per recipe [default: CPUs / jobs]."),
    ] = None,
    benchmark: Annotated[bool, typer.Option("--benchmark/--no-benchmark", help="Measure latency.")] = True,
    baseline_dir: Annotated[
        Path | None,
        typer.Option(
            "--baseline", help="Folder of an earlier run's artifacts (<name>/report.json per recipe)."
        ),
    ] = None,
    max_latency_regression: Annotated[
        str | None, typer.Option("--max-latency-regression", help="Allowed p50 slowdown vs --baseline.")
    ] = None,
    allow_packages: AllowPackages = None,
    junit: JunitOut = None,
    json_out: JsonOut = None,
    debug: DebugFlag = False,
) -> None:
    """Export and gate every recipe: one summary table, one exit code (2, then 3, then 1, then 4 win)."""
    from exporter.gate.reverify import parse_percent
    from exporter.gate.runs import (
        RunInterrupted,
        RunRequest,
        find_recipes,
        merge_exit_codes,
        run_recipes,
        write_junit,
    )

    quiet_json = str(json_out) == "-"

    def done(result: dict[str, Any]) -> None:
        if not quiet_json:
            mark = "[green]ok[/]" if result["exit_code"] == 0 else f"[red]exit {result['exit_code']}[/]"
            name = escape(f"{result['name']:<24}")
            out.print(f"  {name} {mark:<22} {result['seconds']:7.1f} s", highlight=False)

    def action() -> list[dict[str, Any]]:
        if max_latency_regression is not None and baseline_dir is None:
            raise UsageError("--max-latency-regression needs --baseline DIR to compare with")
        budget = parse_percent(max_latency_regression or "10%") if baseline_dir else None
        request = RunRequest(
            tuple(find_recipes(paths)),
            out_root,
            jobs,
            threads,
            benchmark,
            baseline_dir,
            budget,
            tuple(allow_packages or ()),
        )
        if not quiet_json:
            out.print(
                f"[bold]exporter run[/] {len(request.recipes)} recipes, {jobs} at a time", highlight=False
            )
        try:
            return run_recipes(request, done)
        except RunInterrupted as interrupt:  # the workers have stopped: still report what happened
            err.print(f"[red]{interrupt.signal_name}[/]: stopped every recipe", highlight=False)
            return interrupt.results

    results = guarded(debug, action)
    code = merge_exit_codes([r["exit_code"] for r in results])
    if not quiet_json:
        out.print(rich_table("Recipes", _summary(results)))
        verdict = "[green]PASSED[/]" if code == 0 else f"[red]FAILED (exit {int(code)})[/]"
        out.print(f"{verdict}  {sum(r['exit_code'] == 0 for r in results)}/{len(results)} recipes passed")
    write_json(json_out, {"exit_code": int(code), "recipes": results})
    if junit is not None:
        write_junit(junit, results)
    raise typer.Exit(int(code))


def _summary(results: list[dict[str, Any]]) -> RowTable:
    """One row per recipe: its exit code, backends, checks passed, time and first failure."""
    rows = []
    for r in results:
        failed = [c for c in r["checks"] if not c["passed"]]
        passed = len(r["checks"]) - len(failed)
        rows.append(
            [
                r["name"],
                str(r["exit_code"]),
                ", ".join(r["targets"]) or "-",
                f"{passed}/{len(r['checks'])}",
                f"{r['seconds']:.1f} s",
                failed[0]["detail"].splitlines()[0] if failed else "",
            ]
        )
    return ["recipe", "exit", "backends", "checks", "time", "first failure"], rows
