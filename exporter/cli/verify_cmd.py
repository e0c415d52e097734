"""``exporter verify``: re-check an artifacts folder and print one row per check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from exporter.cli.shared import DebugFlag, JsonOut, JunitOut, guarded, out, rich_table, write_json
from exporter.errors import UsageError

__all__ = ["verify_command"]


def verify_command(
    folder: Annotated[Path, typer.Argument(help="An artifacts folder written by exporter export.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Re-derive the reference from this PyTorch checkpoint, not golden files."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Factory for --checkpoint [default: the manifest's].")
    ] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow unpickling --checkpoint (only files you trust).")
    ] = False,
    state_dict_key: Annotated[
        str | None,
        typer.Option(
            "--state-dict-key",
            help="Key of --checkpoint's dict holding the weights (default: the one the export read).",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline", help="A baseline run's report.json; its artifacts are re-timed in this run."
        ),
    ] = None,
    max_latency_regression: Annotated[
        str | None,
        typer.Option(
            "--max-latency-regression", help="Allowed p50 slowdown vs --baseline, e.g. 10% [default: 10%]."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, max=4096, help="Threads [default: all CPUs].")
    ] = None,
    require_real_data: Annotated[
        bool,
        typer.Option(
            "--require-real-data",
            help="Fail (exit 2) when a lossy model's budget was judged on synthetic inputs only at export.",
        ),
    ] = False,
    json_out: JsonOut = None,
    junit: JunitOut = None,
    debug: DebugFlag = False,
) -> None:
    """Re-check an artifacts folder: file hashes, every artifact on its golden inputs, the int8 budget, and
    latency against a baseline.

    Exit codes: 0 every check holds; 1 a file was modified or missing, or parity failed; 2 bad input, or
    (--require-real-data) a lossy model judged on synthetic inputs only; 4 a latency budget was missed.
    """
    from exporter.gate.reverify import describe_exit

    def action() -> Any:
        from exporter.gate.reverify import LatencyBudget, VerifyRequest, parse_percent, verify_artifacts

        if max_latency_regression is not None and baseline is None:
            raise UsageError("--max-latency-regression needs --baseline OLD/report.json to compare with")
        latency = None
        if baseline is not None:
            if not baseline.is_file():
                raise UsageError(
                    f"--baseline '{baseline}' does not exist; pass a report.json of an earlier run"
                )
            latency = LatencyBudget(baseline, parse_percent(max_latency_regression or "10%"))
        request = VerifyRequest(
            folder,
            checkpoint,
            model,
            trust_checkpoint,
            latency,
            require_real_data=require_real_data,
            state_dict_key=state_dict_key,
        )
        if threads:
            request = replace(request, threads=threads)
        with out.status("[bold]verify[/] ...") as status:
            return verify_artifacts(
                request, step=lambda message: status.update(f"[bold]verify[/] {escape(message)}")
            )

    result = guarded(debug, action)
    payload = result.to_json()
    if str(json_out) != "-":
        out.print(_checks_table(f"exporter verify {folder}", payload["checks"]))
    write_json(json_out, payload)
    if junit is not None:
        from exporter.gate.runs import write_junit

        write_junit(junit, [_as_run_result(payload)])
    if str(json_out) != "-":
        verdict = (
            "[green]PASSED[/]" if result.exit_code == 0 else f"[red]FAILED (exit {int(result.exit_code)})[/]"
        )
        out.print(f"{verdict}  {escape(describe_exit(result))}", highlight=False)
    raise typer.Exit(int(result.exit_code))


def _checks_table(title: str, checks: list[dict[str, Any]]) -> Table:
    rows = [
        [
            c["name"],
            "pass" if c["passed"] else ("FAIL" if c["kind"] != "latency" else "FAIL latency"),
            c["detail"],
        ]
        for c in checks
    ]
    return rich_table(title, (["check", "result", "detail"], rows))


def _as_run_result(payload: dict[str, Any]) -> dict[str, Any]:
    """A verify result shaped like one recipe of ``exporter run``, so ``write_junit`` takes it."""
    return {
        "recipe": payload["folder"],
        "name": payload["name"],
        "checks": payload["checks"],
        "seconds": round(sum(c["seconds"] for c in payload["checks"]), 2),
        "not_applicable": {},
    }
