"""``exporter run``: export and gate every recipe of a file or folder, one summary and one exit code.

Each recipe runs in its own fresh process (torch keeps global state between exports: one exporter froze an
LSTM's sequence dim on a second export in the same process), ``jobs`` of them at a time, with the CPUs split
between them so parallel jobs do not oversubscribe the cores. Results are plain dicts so they cross
process boundaries and feed the JSON and JUnit outputs unchanged.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from exporter.errors import ExitCode, ExporterError, RecipeError, UsageError, describe_failure, first_line
from exporter.gate.junit import write_junit
from exporter.interrupts import (
    Interrupted,
    blocked_signals,
    check_interrupted,
    exit_code_of,
    frames_on_thread_stack,
    raise_interrupted,
)
from exporter.stages.staging import MANIFEST_SCHEMA_VERSION, read_document, stale_run_notes

if TYPE_CHECKING:
    from exporter.pipeline import ExportResult

__all__ = [
    "RunInterrupted",
    "RunRequest",
    "check_recipe_names",
    "find_recipes",
    "merge_exit_codes",
    "run_recipe",
    "run_recipes",
    "write_junit",
]


@dataclass(frozen=True)
class RunRequest:
    recipes: tuple[Path, ...]
    out: Path
    jobs: int = 1
    threads: int | None = None
    benchmark: bool = True
    baseline_dir: Path | None = None
    max_latency_regression: float | None = None
    allow_packages: tuple[str, ...] = ()
    """``--allow-package``: packages whose callables the recipes may name."""


def find_recipes(paths: Sequence[Path]) -> list[Path]:
    """Recipe files named directly, or every ``*.toml`` in named folders, sorted.

    Raises:
        RecipeError: a path that does not exist, or no recipe at all.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("*.toml"))
        elif path.is_file():
            found.append(path)
        else:
            raise RecipeError(f"'{path}' is neither a recipe file nor a folder of recipes")
    if not found:
        raise RecipeError(f"no recipes (*.toml) in {', '.join(map(str, paths))}")
    return found


def merge_exit_codes(codes: Sequence[int]) -> ExitCode:
    """One exit code for many: a signal (143, 130) first, then a bug in exporter (5), bad input (2),
    conversion (3), parity (1), a partial export (6), latency (4)."""
    order = (
        ExitCode.TERMINATED,
        ExitCode.INTERRUPTED,
        ExitCode.INTERNAL_ERROR,
        ExitCode.BAD_INPUT,
        ExitCode.CONVERSION_FAILED,
        ExitCode.VERIFICATION_FAILED,
        ExitCode.PARTIAL_EXPORT,
        ExitCode.LATENCY_REGRESSED,
    )
    for code in order:
        if code in codes:
            return code
    return ExitCode.OK if all(c == 0 for c in codes) else ExitCode.INTERNAL_ERROR


class RunInterrupted(Interrupted):
    """``run`` was stopped by a signal: the workers were stopped too, and ``results`` marks each recipe that
    did not finish as interrupted, so the JUnit and JSON reports can still be written."""

    def __init__(self, signum: int, results: list[dict[str, Any]]) -> None:
        super().__init__(signum)
        self.results = results


def check_recipe_names(recipes: Sequence[Path], allow_packages: Sequence[str] = ()) -> dict[Path, str]:
    """Each recipe's output folder name; two recipes with one name would overwrite each other's folder.

    Raises:
        RecipeError: two recipes share a name.
    """
    from exporter.recipe.document import load_recipe

    names: dict[Path, str] = {}
    for path in recipes:
        try:
            names[path] = str(load_recipe(path, allow_packages).settings.get("name", path.stem))
        except ExporterError:  # reported by its own worker, beside the recipes that do run
            names[path] = path.stem
    seen: dict[str, Path] = {}
    for path, name in names.items():
        if name in seen:
            raise RecipeError(
                f"recipes '{seen[name]}' and '{path}' both have name '{name}' and would write the same "
                "folder; give each recipe its own name"
            )
        seen[name] = path
    return names


def _output_folder(out: Path, name: str) -> Path:
    """``out/name``, refused unless it is a folder that ``run`` may replace: new, empty, or an earlier
    export's (it holds our manifest). A folder that ``run`` did not create is never deleted.

    Raises:
        UsageError: the name is not one path component, or the folder holds something else.
    """
    folder = out / name
    if name in {"", ".", ".."} or Path(name).name != name or folder.resolve().parent != out.resolve():
        raise UsageError(f"recipe name '{name}' is not a single folder name inside --out '{out}'")
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UsageError(
            f"'{folder}' exists and is not a folder exporter run wrote; remove it or rename the recipe"
        )
    if folder.is_dir() and any(folder.iterdir()):
        try:
            read_document(folder, "manifest.json", MANIFEST_SCHEMA_VERSION)
        except ExporterError:
            raise UsageError(
                f"'{folder}' exists and holds no manifest.json of exporter, so exporter run will not replace "
                "it; remove it, or pass another --out"
            ) from None
    return folder


def run_recipes(
    request: RunRequest, done: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run every recipe in a fresh process, ``jobs`` at a time; results in recipe order.

    Raises:
        RecipeError: two recipes share a name (before anything runs).
        RunInterrupted: SIGINT or SIGTERM arrived; it was forwarded to the workers, and they were waited
            for, so none writes after this returns.
    """
    names = check_recipe_names(request.recipes, request.allow_packages)
    cpus = len(os.sched_getaffinity(0)) or 1
    threads = request.threads or max(1, cpus // max(1, request.jobs))
    context = multiprocessing.get_context("spawn")
    results: dict[Path, dict[str, Any]] = {}
    queued = list(request.recipes)
    running: dict[Future[dict[str, Any]], tuple[Path, ProcessPoolExecutor]] = {}
    try:
        while queued or running:
            check_interrupted()
            while queued and len(running) < request.jobs:
                with blocked_signals():  # a pool started but not yet in ``running`` would escape the stop
                    path = queued.pop(0)
                    # One pool per recipe: a worker that dies breaks its own pool only, not the others'.
                    pool = ProcessPoolExecutor(
                        max_workers=1, mp_context=context, max_tasks_per_child=1, initializer=_init_worker
                    )
                    future = pool.submit(
                        run_recipe,
                        path,
                        out=request.out,
                        threads=threads,
                        benchmark=request.benchmark,
                        baseline_dir=request.baseline_dir,
                        max_latency_regression=request.max_latency_regression,
                        allow_packages=request.allow_packages,
                    )
                    running[future] = (path, pool)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                path, pool = running.pop(future)
                pool.shutdown(wait=True)  # first: a dead worker is reaped, so its staging counts as stale
                results[path] = _collect(future, path, names[path], request.out / names[path])
                if done:
                    done(results[path])
    except KeyboardInterrupt as interrupt:
        signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
        with blocked_signals():
            _stop_workers([pool for _, pool in running.values()], signum)
        for future, (path, _) in running.items():  # a recipe may have finished while the others stopped
            if path not in results and future.done() and not future.cancelled() and not future.exception():
                results[path] = future.result()
        detail = f"interrupted by {signal.Signals(signum).name} before it finished; nothing was written"
        for path in request.recipes:
            if path not in results or results[path]["checks"][0]["kind"] == "interrupted":
                results[path] = _failed(
                    path, names[path], exit_code_of(interrupt), detail, kind="interrupted"
                )
        raise RunInterrupted(signum, [results[path] for path in request.recipes]) from None
    return [results[path] for path in request.recipes]


class _Worker:
    """Whether this worker process is running a recipe (else a signal just ends it)."""

    busy = False


def _init_worker() -> None:
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, _worker_signal)
    frames_on_thread_stack(signal.SIGINT, signal.SIGTERM)


def _worker_signal(signum: int, frame: FrameType | None) -> None:
    if not _Worker.busy:
        os._exit(128 + signum)  # idle, between recipes: nothing to clean up
    raise_interrupted(signum, frame)


def _collect(future: Future[dict[str, Any]], path: Path, name: str, folder: Path) -> dict[str, Any]:
    """A worker's result; a worker that died (killed, out of memory) or was interrupted becomes one. A
    dead worker's staging folder is removed at once, and what the record beside it says (the stage it was
    in, whether the out-of-memory killer did it) becomes the result's reason."""
    try:
        return future.result()
    except KeyboardInterrupt as interrupt:
        return _failed(path, name, exit_code_of(interrupt), "interrupted", kind="interrupted")
    except Exception as error:
        said = "; ".join(stale_run_notes(folder)) if folder.parent.is_dir() else ""
        return _failed(
            path,
            name,
            ExitCode.INTERNAL_ERROR,
            f"worker process died before reporting ({type(error).__name__}: {first_line(error)}); "
            + (said or "it may have run out of memory or been killed"),
        )


def _stop_workers(pools: Sequence[ProcessPoolExecutor], signum: int) -> None:
    """Forward the signal to every worker, then wait until every worker has exited."""
    processes = [p for pool in pools for p in getattr(pool, "_processes", {}).values()]  # no public handle
    for process in processes:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        process.join()


def run_recipe(
    path: Path,
    *,
    out: Path,
    threads: int,
    benchmark: bool = True,
    baseline_dir: Path | None = None,
    max_latency_regression: float | None = None,
    allow_packages: Sequence[str] = (),
) -> dict[str, Any]:
    """Export one recipe into ``out/<name>`` and gate the folder; never raises (errors become results)."""
    from exporter.gate.reverify import LatencyBudget, VerifyRequest, verify_artifacts
    from exporter.options import build_export_options
    from exporter.pipeline import export
    from exporter.recipe.document import load_recipe

    started = time.perf_counter()
    name = path.stem
    _Worker.busy = True
    try:
        recipe = load_recipe(path, allow_packages)
        name = str(recipe.settings.get("name", path.stem))
        overrides = {
            "out": _output_folder(out, name),
            "force": True,
            "threads": threads,
            "benchmark": None if benchmark else False,  # --no-benchmark wins; else the recipe decides
        }
        exported = export(build_export_options(recipe, overrides))
        checks = _export_checks(exported)
        latency = None
        baseline = baseline_dir / name / "report.json" if baseline_dir else None
        if baseline is not None and max_latency_regression is not None and baseline.is_file():
            latency = LatencyBudget(baseline, max_latency_regression)
        gate = verify_artifacts(VerifyRequest(exported.out_dir, latency=latency, threads=threads))
        checks += [{**c.to_json(), "name": f"verify {c.name}"} for c in gate.checks]
        codes = [int(exported.exit_code), int(gate.exit_code)]
        return {
            "recipe": str(path),
            "name": name,
            "out": str(exported.out_dir),
            "exit_code": int(merge_exit_codes(codes)),
            "error": None,
            "targets": [b.backend for b in exported.backends],
            "failed_targets": [f.to_json() for f in exported.failed_targets],
            "not_applicable": dict(recipe.not_applicable),
            "checks": checks,
            "latency": [s.to_json() for s in exported.latency],
            "seconds": round(time.perf_counter() - started, 2),
        }
    except Exception as error:  # an interrupt is not caught: it stops the worker (see _collect)
        code, detail = describe_failure(error, f"run {path}")
        return _failed(path, name, code, detail, time.perf_counter() - started)


def _export_checks(exported: ExportResult) -> list[dict[str, Any]]:
    """The export's own results as gate checks: each backend's parity, each target that did not convert,
    and the int8 budget when candidates were tried."""
    checks = [
        {
            "name": f"export parity {b.backend}",
            "kind": "parity",
            "passed": b.passed,
            "detail": (b.notes or b.shipped_parity.failures() or [f"{b.shipped} {b.file or ''}".strip()])[0],
        }
        for b in exported.backends
    ]
    checks += [
        {
            "name": f"export convert {failure.backend}",
            "kind": "convert",
            "passed": False,
            "detail": "\n\n".join(filter(None, (failure.error, failure.explanation))),
        }
        for failure in exported.failed_targets
    ]
    if exported.quantization is not None:
        checks.append(
            {
                "name": "export int8 budget",
                "kind": "int8",
                "passed": exported.quantization.passed,
                "detail": "; ".join(exported.quantization.notes) or "within budget",
            }
        )
    return checks


def _failed(
    path: Path, name: str, code: ExitCode, error: str, seconds: float = 0.0, *, kind: str = "export"
) -> dict[str, Any]:
    return {
        "recipe": str(path),
        "name": name,
        "out": None,
        "exit_code": int(code),
        "error": error,
        "targets": [],
        "not_applicable": {},
        "checks": [{"name": kind, "kind": kind, "passed": False, "detail": error}],
        "latency": [],
        "seconds": round(seconds, 2),
    }
