"""Command line: parse flags, call ``exporter.pipeline.export``, print. No pipeline logic lives here.

Exit codes: 0 success; 1 verification failed (report written); 2 bad input or usage; 3 conversion failed;
4 latency budget missed; 5 internal error (a bug in exporter; traceback in a log file); 130/143 SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table
from rich.text import Text

from exporter.errors import ExitCode, ExporterError, LoadError, UsageError
from exporter.interrupts import (
    describe_internal_error,
    exit_code_of,
    install_signal_handlers,
    write_crash_log,
)
from exporter.pipeline import ExportOptions, ExportResult, StageRecord, StageStatus, export
from exporter.recipe import load_recipe
from exporter.report import Table as RowTable
from exporter.report import latency_matrix, parity_matrix, parity_table, quantization_table
from exporter.specs import InputSpec, parse_tensor_spec
from exporter.targets import expand_targets

T = TypeVar("T")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a trained PyTorch model into verified, benchmarked deployment artifacts.",
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class Target(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    compile = "compile"
    all = "all"


class TorchScriptModeFlag(StrEnum):
    auto = "auto"
    script = "script"
    trace = "trace"


class CompileModeFlag(StrEnum):
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"


class QuantizeFlag(StrEnum):
    none = "none"
    dynamic = "dynamic"
    static = "static"
    qat = "qat"
    int8 = "int8"


class CalibrationMethodFlag(StrEnum):
    auto = "auto"
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class OnnxExporterFlag(StrEnum):
    auto = "auto"
    dynamo = "dynamo"
    torchscript = "torchscript"


@app.callback()
def _root() -> None:
    """Turn a trained PyTorch model into verified, benchmarked deployment artifacts."""


class _RichProgress:
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
        detail = "" if record.status is StageStatus.FAILED and record.name != "verify" else record.detail
        self.console.print(
            f"  {record.name:<10} {mark:<18} {record.seconds:6.2f} s  [dim]{escape(detail)}[/]",
            highlight=False,
        )

    def step(self, message: str, done: int, total: int) -> None:
        if self.status is not None:
            count = f" ({done}/{total})" if total else ""
            self.status.update(f"[bold]{self.stage}[/] {escape(message)}{count}")

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()


def _rich_table(title: str, table: RowTable) -> Table:
    headers, rows = table
    rendered = Table(title=Text(title), title_justify="left", show_lines=False)
    for header in headers:
        rendered.add_column(Text(header), overflow="fold")
    for row in rows:
        style = "red" if any(cell.startswith("FAIL") for cell in row) else None
        rendered.add_row(*(Text(cell) for cell in row), style=style)
    return rendered


def _print_summary(result: ExportResult) -> None:
    report = result.report
    out.print(
        _rich_table("Parity matrix: shipped artifact x shape case, worst max abs diff", parity_matrix(report))
    )
    failing = [b for b in result.backends if not b.passed]
    if failing:
        shipped = {
            **report,
            "parity": [p.to_json() for b in failing for p in b.parity if p.artifact == b.shipped],
        }
        out.print(_rich_table("Parity failures in detail", parity_table(shipped)))
    if report["quantization"]:
        out.print(
            _rich_table(f"Int8 ({report['quantization']['budget']['text']})", quantization_table(report))
        )
    if report["latency"]:
        title = f"Latency matrix ({report['environment']['threads']} threads): p50 ms (speedup vs eager)"
        out.print(_rich_table(title, latency_matrix(report)))
    for note in report["notes"]:
        out.print(f"[yellow]note:[/] {escape(note)}")
    verdict = "[green]PASSED[/]" if result.passed else "[red]FAILED: verification[/]"
    int8 = ["model.int8.onnx"] if result.quantization and result.quantization.chosen else []
    files = ", ".join(
        [*(b.file for b in result.backends if b.file), *int8, "golden/", "manifest.json", "report.md/.html"]
    )
    out.print(f"{verdict}  artifacts in [bold]{escape(str(result.out_dir))}[/] ({escape(files)})")


@app.command("export")
def export_command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="TorchScript archive, torch.export .pt2, state_dict, .safetensors or pickled module."
        ),
    ] = None,
    to: Annotated[
        list[Target] | None,
        typer.Option(
            "--to",
            help="Target: onnx, torchscript, compile (torch.compile + AOTInductor model.pt2), or all; "
            "repeat for several [default: onnx].",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Factory building the architecture: package.module:callable or path/file.py:callable.",
        ),
    ] = None,
    model_kwargs: Annotated[
        str | None,
        typer.Option("--model-kwargs", help="Keyword arguments for --model as JSON, e.g. '{\"width\": 16}'."),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="NAME:DTYPE:DIMS[:LOW..HIGH], once per input. DIMS: comma-separated ints (static) or "
            "label=size "
            "(dynamic; a label shared by inputs is one dim). Ints are drawn from [LOW, HIGH). "
            "E.g. image:float32:batch=1,3,224,224 or input_ids:int64:batch=2,seq=128:0..30522",
        ),
    ] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="Recipe TOML; flags override it.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Artifacts folder [default: artifacts/<name>].")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder once the new one is complete.")
    ] = False,
    atol: Annotated[
        float | None, typer.Option("--atol", min=0.0, help="Absolute tolerance [default: 1e-4].")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option("--rtol", min=0.0, help="Relative tolerance [default: 1e-3].")
    ] = None,
    opset: Annotated[
        int | None, typer.Option("--opset", min=7, max=30, help="ONNX opset [default: the exporter's].")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, max=4096, help="Threads for every backend [default: all CPUs]."),
    ] = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", help="Allow unpickling arbitrary objects (only for files you trust)."
        ),
    ] = False,
    onnx_exporter: Annotated[
        OnnxExporterFlag | None,
        typer.Option("--onnx-exporter", help="auto tries dynamo, then the TorchScript-based exporter."),
    ] = None,
    simplify: Annotated[
        bool | None, typer.Option("--simplify/--no-simplify", help="Try onnxsim [default: on].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Seed for drawn inputs [default: 0].")
    ] = None,
    benchmark: Annotated[
        bool | None, typer.Option("--benchmark/--no-benchmark", help="Measure latency [default: on].")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name [default: checkpoint stem].")] = None,
    quantize: Annotated[
        QuantizeFlag | None,
        typer.Option(
            "--quantize",
            help="int8 mode: dynamic, static, qat, or int8 (try all, ship the fastest within budget).",
        ),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            help="Calibration data: .npz (one array per input, samples on axis 0), a folder of .npy/.npz/.pt "
            "samples, or package.module:callable [default: drawn from the spec, with a warning].",
        ),
    ] = None,
    calibration_samples: Annotated[
        int | None, typer.Option("--calibration-samples", min=1, help="Calibration samples [default: 64].")
    ] = None,
    calibration_method: Annotated[
        CalibrationMethodFlag | None,
        typer.Option(
            "--calibration-method",
            help="Static ranges; auto tries percentile and entropy when minmax misses the budget "
            "[default: auto].",
        ),
    ] = None,
    min_cosine: Annotated[
        float | None, typer.Option("--min-cosine", help="int8 budget: min cosine per sample [default: 0.99].")
    ] = None,
    min_top1: Annotated[
        float | None, typer.Option("--min-top1", help="int8 budget: min top-1 agreement of 2-D outputs.")
    ] = None,
    min_sqnr: Annotated[float | None, typer.Option("--min-sqnr", help="int8 budget: min SQNR in dB.")] = None,
    torchscript_mode: Annotated[
        TorchScriptModeFlag | None,
        typer.Option(
            "--torchscript-mode",
            help="script keeps control flow, trace records one path; auto: script, then trace.",
        ),
    ] = None,
    compile_mode: Annotated[
        CompileModeFlag | None, typer.Option("--compile-mode", help="torch.compile mode [default: default].")
    ] = None,
    optimize: Annotated[
        str | None,
        typer.Option(
            "--optimize",
            help="ONNX graph optimization: auto, none, or steps from transformer,splitnorm,ort,fp16 "
            "(comma-separated); a step is kept only if it verifies and is not slower [default: auto].",
        ),
    ] = None,
    fail_on_nonfinite: Annotated[
        bool,
        typer.Option(
            "--fail-on-nonfinite",
            help="Fail (exit 1) when the PyTorch model's own outputs hold NaN or Inf on the golden inputs.",
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Export CHECKPOINT (ONNX, TorchScript, torch.compile/AOTInductor), verify every backend against PyTorch
    at several shapes, time them alike, write artifacts.

    Exit codes: 0 passed; 1 verification failed (report still written); 2 bad input or usage;
    3 conversion failed; 5 internal error; 130/143 interrupted (nothing written).
    """
    flags = {
        "checkpoint": checkpoint,
        "name": name,
        "out": out_dir,
        "model_ref": model,
        "model_kwargs": model_kwargs,
        "atol": atol,
        "rtol": rtol,
        "opset": opset,
        "threads": threads,
        "onnx_exporter": onnx_exporter.value if onnx_exporter else None,
        "simplify": simplify,
        "seed": seed,
        "benchmark": benchmark,
        "trust_checkpoint": trust_checkpoint or None,
        "targets": tuple(t.value for t in to) if to else None,
        "torchscript_mode": torchscript_mode.value if torchscript_mode else None,
        "compile_mode": compile_mode.value if compile_mode else None,
        "force": force,
        "fail_on_nonfinite": fail_on_nonfinite or None,
    }
    quantization_flags = {
        "mode": quantize.value if quantize else None,
        "calibration": calibration,
        "samples": calibration_samples,
        "method": calibration_method.value if calibration_method else None,
        "min_cosine": min_cosine,
        "min_top1": min_top1,
        "min_sqnr_db": min_sqnr,
    }
    quantization = {k: v for k, v in quantization_flags.items() if v is not None}
    result = _guarded(
        debug,
        lambda: _run(
            _build_options(recipe, flags, quantization, inputs or [], _optimization_flags(optimize))
        ),
    )
    _print_summary(result)
    raise typer.Exit(int(result.exit_code))


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--model-kwargs is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UsageError("--model-kwargs must be a JSON object, e.g. '{\"width\": 16}'")
    return value


def _optimization_flags(text: str | None) -> dict[str, Any]:
    """``--optimize auto|none|step,step``, checked against the known steps."""
    if text is None:
        return {}
    from exporter.optimize import OPTIMIZE_STEPS

    steps = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in steps if s not in {"auto", "none", *OPTIMIZE_STEPS}]
    if unknown or not steps:
        raise UsageError(
            f"--optimize {','.join(unknown) or text!r}: use auto, none, or steps from "
            f"{', '.join(OPTIMIZE_STEPS)}"
        )
    return {"steps": steps}


def _build_options(
    recipe: Path | None,
    flags: dict[str, Any],
    quantization_flags: dict[str, Any],
    input_texts: list[str],
    optimization_flags: dict[str, Any] | None = None,
) -> ExportOptions:
    """Recipe settings first, flags given on the command line over them; ``--input`` replaces by name."""
    settings: dict[str, Any] = {}
    spec: InputSpec | None = None
    if recipe is not None:
        loaded = load_recipe(recipe)
        settings.update(loaded.settings)
        spec = InputSpec(loaded.inputs, loaded.dims) if loaded.inputs else None
    flags = {**flags, "model_kwargs": _json_object(flags.get("model_kwargs"))}
    quantization = {**settings.get("quantization", {}), **quantization_flags}
    optimization = {**settings.get("optimization", {}), **(optimization_flags or {})}
    settings.update({key: value for key, value in flags.items() if value is not None})
    if quantization:
        settings["quantization"] = quantization
    if optimization:
        settings["optimization"] = optimization
    if "checkpoint" not in settings:
        raise UsageError("no CHECKPOINT given (as an argument or in the recipe's [model].checkpoint)")
    if not Path(settings["checkpoint"]).exists():  # before the inputs, which a missing file makes moot
        raise LoadError(f"checkpoint '{settings['checkpoint']}' does not exist")
    cli_tensors = [parse_tensor_spec(text) for text in input_texts]
    settings["spec"] = spec.with_overrides(cli_tensors) if spec else InputSpec(tuple(cli_tensors))
    return ExportOptions.from_settings(settings)


def _run(options: ExportOptions) -> ExportResult:
    progress = _RichProgress(out)
    targets = ", ".join(expand_targets(options.targets))
    out.print(
        f"[bold]exporter[/] {escape(str(options.checkpoint))} -> {targets} ({options.threads} threads)",
        highlight=False,
    )
    try:
        return export(options, progress)
    finally:
        progress.close()


def _guarded(debug: bool, action: Callable[[], T]) -> T:
    """Turn errors into one line and their exit code; ``--debug`` lets the traceback through instead."""
    try:
        return action()
    except ExporterError as error:
        if debug:
            raise
        err.print(f"[red]error ({error.stage}):[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(int(error.exit_code)) from None
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        code = exit_code_of(interrupt)
        what = "terminated (SIGTERM)" if code is ExitCode.TERMINATED else "interrupted"
        err.print(f"[red]{what}[/]: nothing was written", highlight=False)
        raise typer.Exit(int(code)) from None
    except Exception as error:
        if debug:
            raise
        log = write_crash_log(error, " ".join(sys.argv[1:]))
        err.print(
            f"[red]error:[/] {escape(describe_internal_error(error, log))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(int(ExitCode.INTERNAL_ERROR)) from None


def _write_json(target: Path | None, payload: Any) -> None:
    """``--json FILE`` writes the document; ``--json -`` prints it instead of the tables."""
    if target is None:
        return
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _checks_table(title: str, checks: list[dict[str, Any]]) -> Table:
    rows = [
        [
            c["name"],
            "pass" if c["passed"] else ("FAIL" if c["kind"] != "latency" else "FAIL latency"),
            c["detail"],
        ]
        for c in checks
    ]
    return _rich_table(title, (["check", "result", "detail"], rows))


@app.command("verify")
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
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write results as JSON (- for stdout).")
    ] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Re-check an artifacts folder: file hashes, every artifact on its golden inputs, the int8 budget, and
    latency against a baseline.

    Exit codes: 0 every check holds; 1 a file was modified or missing, or parity failed; 2 bad input;
    4 a latency budget was missed (parity held).
    """

    def action() -> Any:
        from exporter.gate import LatencyBudget, VerifyRequest, parse_percent, verify_artifacts

        if max_latency_regression is not None and baseline is None:
            raise UsageError("--max-latency-regression needs --baseline OLD/report.json to compare with")
        latency = None
        if baseline is not None:
            if not baseline.is_file():
                raise UsageError(
                    f"--baseline '{baseline}' does not exist; pass a report.json of an earlier run"
                )
            latency = LatencyBudget(baseline, parse_percent(max_latency_regression or "10%"))
        request = VerifyRequest(folder, checkpoint, model, trust_checkpoint, latency)
        if threads:
            request = VerifyRequest(folder, checkpoint, model, trust_checkpoint, latency, threads)
        with out.status("[bold]verify[/] ...") as status:
            return verify_artifacts(request, step=lambda message: status.update(f"[bold]verify[/] {message}"))

    result = _guarded(debug, action)
    payload = result.to_json()
    if str(json_out) != "-":
        out.print(_checks_table(f"exporter verify {folder}", payload["checks"]))
    _write_json(json_out, payload)
    if junit is not None:
        from exporter.runs import write_junit

        write_junit(junit, [_as_run_result(payload)])
    from exporter.gate import describe_exit

    if str(json_out) != "-":
        verdict = (
            "[green]PASSED[/]" if result.exit_code == 0 else f"[red]FAILED (exit {int(result.exit_code)})[/]"
        )
        out.print(f"{verdict}  {escape(describe_exit(result))}", highlight=False)
    raise typer.Exit(int(result.exit_code))


def _as_run_result(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "recipe": payload["folder"],
        "name": payload["name"],
        "checks": payload["checks"],
        "seconds": round(sum(c["seconds"] for c in payload["checks"]), 2),
        "not_applicable": {},
    }


@app.command("run")
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
    junit: Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write results as JSON (- for stdout).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Export and gate every recipe: one summary table, one exit code (2, then 3, then 1, then 4 win)."""
    from exporter.gate import parse_percent
    from exporter.runs import (
        RunInterrupted,
        RunRequest,
        find_recipes,
        merge_exit_codes,
        run_recipes,
        write_junit,
    )

    def action() -> list[dict[str, Any]]:
        if max_latency_regression is not None and baseline_dir is None:
            raise UsageError("--max-latency-regression needs --baseline DIR to compare with")
        budget = parse_percent(max_latency_regression or "10%") if baseline_dir else None
        request = RunRequest(
            tuple(find_recipes(paths)), out_root, jobs, threads, benchmark, baseline_dir, budget
        )
        quiet_json = str(json_out) == "-"

        def done(result: dict[str, Any]) -> None:
            if not quiet_json:
                mark = "[green]ok[/]" if result["exit_code"] == 0 else f"[red]exit {result['exit_code']}[/]"
                name = escape(f"{result['name']:<24}")
                out.print(f"  {name} {mark:<22} {result['seconds']:7.1f} s", highlight=False)

        if not quiet_json:
            out.print(
                f"[bold]exporter run[/] {len(request.recipes)} recipes, {jobs} at a time", highlight=False
            )
        try:
            return run_recipes(request, done)
        except RunInterrupted as interrupt:  # the workers have stopped: still report what happened
            err.print(f"[red]{interrupt.signal_name}[/]: stopped every recipe", highlight=False)
            return interrupt.results

    results = _guarded(debug, action)
    code = merge_exit_codes([r["exit_code"] for r in results])
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
    if str(json_out) != "-":
        out.print(
            _rich_table("Recipes", (["recipe", "exit", "backends", "checks", "time", "first failure"], rows))
        )
        verdict = "[green]PASSED[/]" if code == 0 else f"[red]FAILED (exit {int(code)})[/]"
        out.print(f"{verdict}  {sum(r['exit_code'] == 0 for r in results)}/{len(results)} recipes passed")
    _write_json(json_out, {"exit_code": int(code), "recipes": results})
    if junit is not None:
        write_junit(junit, results)
    raise typer.Exit(int(code))


@app.command("recipes")
def recipes_command(
    folder: Annotated[Path, typer.Argument(help="A folder of recipes.")] = Path("recipes"),
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """List the recipes in FOLDER: name, pattern, targets, and targets that do not apply (and why)."""
    from exporter.runs import find_recipes

    def action() -> list[Any]:
        return [load_recipe(path) for path in find_recipes([folder])]

    rows = []
    for recipe in _guarded(debug, action):
        rows.append(
            [
                recipe.path.name,
                str(recipe.settings.get("name", recipe.path.stem)),
                recipe.description,
                ", ".join(recipe.settings.get("targets", ["onnx"])),
                "; ".join(f"{t}: {why}" for t, why in recipe.not_applicable.items()) or "-",
            ]
        )
    out.print(
        _rich_table(f"Recipes in {folder}", (["file", "name", "pattern", "targets", "not applicable"], rows))
    )


@app.command("report")
def report_command(
    folder: Annotated[Path, typer.Argument(help="An artifacts folder with a report.json.")],
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Re-render report.md and the self-contained report.html from FOLDER/report.json."""
    from exporter.artifacts import read_document
    from exporter.report import REPORT_SCHEMA_VERSION, render_reports

    def action() -> list[Path]:
        return render_reports(folder, read_document(folder, "report.json", REPORT_SCHEMA_VERSION))

    for written in _guarded(debug, action):
        out.print(Text(f"wrote {written}"))


@app.command("inspect")
def inspect_command(
    file: Annotated[
        Path | None, typer.Argument(help="A checkpoint (any format export reads) or an .onnx model.")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option("--recipe", help="Take checkpoint, factory and inputs from a recipe.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Factory for weights-only checkpoints.")
    ] = None,
    model_kwargs: Annotated[
        str | None, typer.Option("--model-kwargs", help="JSON kwargs for --model.")
    ] = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", help="NAME:DTYPE:DIMS to report output shapes.")
    ] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow unpickling (only files you trust).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the summary as JSON (- for stdout).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Summarize a checkpoint (layers, parameters, output shapes) or an ONNX model (I/O, operators, opset)."""
    from exporter.summary import summarize_checkpoint, summarize_onnx

    def action() -> dict[str, Any]:
        settings: dict[str, Any] = {}
        spec: InputSpec | None = None
        if recipe is not None:
            loaded = load_recipe(recipe)
            settings = dict(loaded.settings)
            spec = InputSpec(loaded.inputs, loaded.dims)
        path = file or settings.get("checkpoint")
        if path is None:
            raise UsageError("no FILE given (as an argument or in the recipe's [model].checkpoint)")
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"'{path}' does not exist")
        if path.suffix == ".onnx":
            return summarize_onnx(path)
        if inputs:
            tensors = [parse_tensor_spec(t) for t in inputs]
            spec = spec.with_overrides(tensors) if spec else InputSpec(tuple(tensors))
        return summarize_checkpoint(
            path,
            model_ref=model or settings.get("model_ref"),
            model_kwargs=_json_object(model_kwargs) or settings.get("model_kwargs"),
            trust_checkpoint=trust_checkpoint or bool(settings.get("trust_checkpoint")),
            spec=spec,
        )

    summary = _guarded(debug, action)
    if str(json_out) != "-":
        _print_inspection(summary)
    _write_json(json_out, summary)


def _print_inspection(summary: dict[str, Any]) -> None:
    size = f"{summary['bytes'] / 1e6:.2f} MB"
    if summary["kind"] == "onnx":
        opsets = ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
        out.print(
            f"[bold]{escape(str(summary['file']))}[/]: ONNX, opset {escape(opsets)}, "
            f"IR {summary['ir_version']}, "
            f"{summary['nodes']} nodes, {summary['parameters']:,} parameters, {size} "
            f"({escape(str(summary['producer']))})",
            highlight=False,
        )
        io_rows = [
            [kind, v["name"], v["dtype"], str(v["shape"])]
            for kind in ("inputs", "outputs")
            for v in summary[kind]
        ]
        out.print(_rich_table("Inputs and outputs", (["", "name", "dtype", "shape"], io_rows)))
        op_rows = [[op, str(count)] for op, count in summary["operators"].items()]
        out.print(_rich_table("Operators", (["operator", "count"], op_rows)))
        return
    out.print(
        f"[bold]{escape(str(summary['file']))}[/]: {summary['format']}, {escape(str(summary['model']))}, "
        f"{summary['parameters']:,} "
        f"parameters ({summary['trainable_parameters']:,} trainable, {summary['buffers']:,} in buffers), "
        f"{size}",
        highlight=False,
    )
    layer_rows = [[layer["name"], layer["type"], f"{layer['parameters']:,}"] for layer in summary["layers"]]
    out.print(_rich_table("Layers", (["layer", "type", "parameters"], layer_rows)))
    if summary["outputs"]:
        rows = [[o["name"], o["dtype"], str(o["shape"])] for o in summary["outputs"]]
        shapes = " ".join(f"{name}{shape}" for name, shape in summary["input_shapes"].items())
        title = f"Outputs for {shapes}"
        out.print(_rich_table(title, (["output", "dtype", "shape"], rows)))


def main() -> None:
    """Console-script entry point: SIGTERM stops a run as Ctrl-C does (exit 143, nothing left behind)."""
    install_signal_handlers()
    app(prog_name="exporter")


if __name__ == "__main__":  # pragma: no cover
    main()
