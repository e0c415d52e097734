"""``exporter run``: export and gate every recipe of a file or folder, one summary and one exit code.

Each recipe runs in its own fresh process (torch keeps global state between exports: one exporter froze an
LSTM's sequence dim on a second export in the same process), ``jobs`` of them at a time, with the CPUs split
between them so parallel jobs do not oversubscribe the cores. Results are plain dicts so they cross
process boundaries and feed the JSON and JUnit outputs unchanged.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from exporter.errors import ExitCode, ExporterError, RecipeError, first_line

__all__ = ["RunRequest", "find_recipes", "merge_exit_codes", "run_recipe", "run_recipes", "write_junit"]


@dataclass(frozen=True)
class RunRequest:
    recipes: tuple[Path, ...]
    out: Path
    jobs: int = 1
    threads: int | None = None
    benchmark: bool = True
    baseline_dir: Path | None = None
    max_latency_regression: float | None = None


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
    """One exit code for many: bad input (2) first, then conversion (3), parity (1), latency (4)."""
    order = (
        ExitCode.BAD_INPUT,
        ExitCode.CONVERSION_FAILED,
        ExitCode.VERIFICATION_FAILED,
        ExitCode.LATENCY_REGRESSED,
    )
    for code in order:
        if code in codes:
            return code
    return ExitCode.OK if all(c == 0 for c in codes) else ExitCode.CONVERSION_FAILED


def run_recipes(
    request: RunRequest, done: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run every recipe in a fresh process, ``jobs`` at a time; results in recipe order."""
    cpus = len(os.sched_getaffinity(0)) or 1
    threads = request.threads or max(1, cpus // max(1, request.jobs))
    context = multiprocessing.get_context("spawn")
    results: dict[Path, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=request.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {
            pool.submit(
                run_recipe,
                path,
                out=request.out,
                threads=threads,
                benchmark=request.benchmark,
                baseline_dir=request.baseline_dir,
                max_latency_regression=request.max_latency_regression,
            ): path
            for path in request.recipes
        }
        for future in as_completed(futures):
            path = futures[future]
            try:
                result = future.result()
            except Exception as error:  # the worker died (killed, out of memory): report, go on
                result = _failed(
                    path, path.stem, ExitCode.CONVERSION_FAILED, f"worker failed: {first_line(error)}"
                )
            results[path] = result
            if done:
                done(result)
    return [results[path] for path in request.recipes]


def run_recipe(
    path: Path,
    *,
    out: Path,
    threads: int,
    benchmark: bool = True,
    baseline_dir: Path | None = None,
    max_latency_regression: float | None = None,
) -> dict[str, Any]:
    """Export one recipe into ``out/<name>`` and gate the folder; never raises (errors become results)."""
    from exporter.gate import LatencyBudget, VerifyRequest, verify_artifacts
    from exporter.pipeline import ExportOptions, export
    from exporter.recipe import load_recipe
    from exporter.specs import InputSpec

    started = time.perf_counter()
    name = path.stem
    try:
        recipe = load_recipe(path)
        name = str(recipe.settings.get("name", path.stem))
        settings = {
            **recipe.settings,
            "out": out / name,
            "force": True,
            "threads": threads,
            "benchmark": benchmark and recipe.settings.get("benchmark", True),
            "spec": InputSpec(recipe.inputs, recipe.dims),
        }
        exported = export(ExportOptions.from_settings(settings))
        checks = [
            {
                "name": f"export parity {b.backend}",
                "kind": "parity",
                "passed": b.passed,
                "detail": (b.notes or b.shipped_parity.failures() or [f"{b.shipped} {b.file or ''}".strip()])[
                    0
                ],
            }
            for b in exported.backends
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
            "not_applicable": dict(recipe.not_applicable),
            "checks": checks,
            "latency": [s.to_json() for s in exported.latency],
            "seconds": round(time.perf_counter() - started, 2),
        }
    except ExporterError as error:
        return _failed(path, name, error.exit_code, f"{error.stage}: {error}", time.perf_counter() - started)
    except Exception as error:
        detail = (
            f"internal error: {type(error).__name__}: {first_line(error)}\n{traceback.format_exc(limit=5)}"
        )
        return _failed(path, name, ExitCode.CONVERSION_FAILED, detail, time.perf_counter() - started)


def _failed(path: Path, name: str, code: ExitCode, error: str, seconds: float = 0.0) -> dict[str, Any]:
    return {
        "recipe": str(path),
        "name": name,
        "out": None,
        "exit_code": int(code),
        "error": error,
        "targets": [],
        "not_applicable": {},
        "checks": [{"name": "export", "kind": "export", "passed": False, "detail": error}],
        "latency": [],
        "seconds": round(seconds, 2),
    }


def write_junit(path: Path, results: Sequence[dict[str, Any]]) -> None:
    """One ``testsuite`` per recipe, one ``testcase`` per check; a recipe that could not run is an error."""
    suites = ET.Element("testsuites", name="exporter run")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for result in results:
        suite = ET.SubElement(suites, "testsuite", name=result["name"], file=result["recipe"])
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for check in result["checks"]:
            case = ET.SubElement(
                suite, "testcase", classname=f"exporter.{result['name']}", name=check["name"], time="0"
            )
            counts["tests"] += 1
            if check["passed"]:
                continue
            if check["kind"] == "export":
                element = ET.SubElement(case, "error", message=check["detail"].splitlines()[0][:500])
                counts["errors"] += 1
            else:
                element = ET.SubElement(case, "failure", message=check["detail"][:500])
                counts["failures"] += 1
            element.text = check["detail"]
        for target, reason in result.get("not_applicable", {}).items():
            case = ET.SubElement(
                suite, "testcase", classname=f"exporter.{result['name']}", name=f"target {target}"
            )
            ET.SubElement(case, "skipped", message=reason)
            counts["tests"] += 1
            counts["skipped"] += 1
        suite.set("time", str(result["seconds"]))
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        suites.set(key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
