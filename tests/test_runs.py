"""``exporter run`` hardened: exit-code precedence, duplicate names, folders it did not write, dead workers,
bugs in exporter, and SIGINT/SIGTERM stopping every worker while still writing JUnit and JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import ExitCode
from exporter.gate.runs import RunRequest, merge_exit_codes, run_recipe, run_recipes
from tests.models import MODELS, MODELS_FILE

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [*map(str, args)])
    return result.exit_code, result.output


def _recipe(folder: Path, name: str, model: str, extra: str = "", *, file: str | None = None) -> Path:
    """A recipe for a tiny model of ``tests/models.py`` with its state_dict beside it, ONNX only."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / f"{file or name}.pt"
    torch.save(MODELS[model].build().state_dict(), checkpoint)
    specs = ", ".join(f'"{s}"' for s in MODELS[model].inputs)
    # A recipe may name code only in its own project: the models travel with it.
    (folder / "models.py").write_bytes(MODELS_FILE.read_bytes())
    return _write_recipe(
        folder,
        file or name,
        name=name,
        checkpoint=checkpoint,
        factory=f"models.py:{MODELS[model].factory}",
        specs=specs,
        extra=extra,
    )


def _write_recipe(
    folder: Path, file: str, *, name: str, checkpoint: Path, factory: str, specs: str, extra: str = ""
) -> Path:
    path = folder / f"{file}.toml"
    path.write_text(
        f'schema_version = 1\nname = "{name}"\n\n[model]\ncheckpoint = "{checkpoint.name}"\n'
        f'factory = "{factory}"\n\n[inputs]\nspecs = [{specs}]\n\n'
        f'[export]\ntargets = ["onnx"]\n{extra}'
    )
    return path


def _linear_recipe(folder: Path, name: str, factory_code: str, factory: str) -> Path:
    """A recipe whose factory lives in ``<name>_model.py`` beside it (workers import it by file path)."""
    folder.mkdir(parents=True, exist_ok=True)
    module = folder / f"{name}_model.py"
    module.write_text(factory_code)
    checkpoint = folder / f"{name}.pt"
    torch.save(nn.Linear(4, 4).state_dict(), checkpoint)
    return _write_recipe(
        folder,
        name,
        name=name,
        checkpoint=checkpoint,
        factory=f"{module}:{factory}",
        specs='"x:float32:batch=2,4"',
    )


_SUICIDE = """
import os
import signal


def build():
    os.kill(os.getpid(), signal.SIGKILL)
"""

_DIES_CONVERTING = """
import os
import signal

import torch
from torch import nn


class DiesWhenExported(nn.Linear):
    def forward(self, x):
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def build():
    return DiesWhenExported(4, 4)
"""

_SLOW = """
import time

from torch import nn


class SlowLinear(nn.Linear):
    def forward(self, x):
        time.sleep(0.5)
        return super().forward(x)


def build():
    return SlowLinear(4, 4)
"""


@pytest.mark.slow
def test_a_worker_killed_mid_export_is_reported_with_its_stage_and_leaves_nothing(tmp_path: Path) -> None:
    recipes, out = tmp_path / "recipes", tmp_path / "out"
    dying = _linear_recipe(recipes, "dies", _DIES_CONVERTING, "build")
    (result,) = run_recipes(RunRequest((dying,), out, jobs=1, benchmark=False))
    assert result["exit_code"] == ExitCode.INTERNAL_ERROR
    error = " ".join(result["error"].split())
    assert "worker process died" in error and "stopped in its convert stage before it finished" in error
    assert "its staging folder was removed" in error
    assert [p.name for p in out.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([1, 3, 4], 3),
        ([4, 1], 1),
        ([4, 0], 4),
        ([5, 2, 3], 5),
        ([2, 3], 2),
        ([3, 1, 4, 0], 3),
        ([143, 130, 5], 143),
        ([0, 130, 2], 130),
        ([0, 0], 0),
        ([], 0),
    ],
)
def test_merge_exit_codes_precedence(codes: list[int], expected: int) -> None:
    assert merge_exit_codes(codes) == expected


def test_an_unknown_exit_code_is_not_reported_as_success() -> None:
    assert merge_exit_codes([0, 7]) == ExitCode.INTERNAL_ERROR


def test_two_recipes_with_one_name_are_refused_before_anything_runs(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    first = _recipe(recipes, "twin", "mlp", file="a")
    second = _recipe(recipes, "twin", "mlp", file="b")
    code, output = _invoke("run", recipes, "--out", tmp_path / "out", "--no-benchmark")
    assert code == ExitCode.BAD_INPUT, output
    lines = [line for line in output.splitlines() if str(first) in line]
    assert len(lines) == 1 and str(second) in lines[0] and "twin" in lines[0], output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_never_replaces_a_folder_it_did_not_write(tmp_path: Path) -> None:
    recipes, out = tmp_path / "recipes", tmp_path / "out"
    _recipe(recipes, "mine", "mlp")
    precious = out / "mine" / "precious.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("do not delete")
    report = tmp_path / "run.json"
    code, output = _invoke("run", recipes, "--out", out, "--no-benchmark", "--json", report)
    assert code == ExitCode.BAD_INPUT, output
    (result,) = json.loads(report.read_text())["recipes"]
    assert result["exit_code"] == ExitCode.BAD_INPUT
    assert "holds no manifest.json" in result["error"] and str(out / "mine") in result["error"]
    assert precious.read_text() == "do not delete"
    assert sorted(p.name for p in (out / "mine").iterdir()) == ["precious.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["mine"]  # no staging or lock left beside it


@pytest.mark.slow
def test_run_replaces_the_folder_of_an_earlier_export(tmp_path: Path) -> None:
    recipes, out = tmp_path / "recipes", tmp_path / "out"
    _recipe(recipes, "mine", "mlp")
    code, output = _invoke("run", recipes, "--out", out, "--no-benchmark")
    assert code == 0, output
    (out / "mine" / "stale.txt").write_text("from the earlier export")
    code, output = _invoke("run", recipes, "--out", out, "--no-benchmark")
    assert code == 0, output
    assert (out / "mine" / "model.onnx").is_file() and not (out / "mine" / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["mine"]


@pytest.mark.slow
def test_a_worker_that_dies_is_exit_5_and_the_other_recipes_still_run(tmp_path: Path) -> None:
    recipes, out = tmp_path / "recipes", tmp_path / "out"
    dying = _linear_recipe(recipes, "a_dies", _SUICIDE, "build")
    normal = _recipe(recipes, "b_normal", "mlp")
    for jobs in (1, 2):
        results = run_recipes(RunRequest((dying, normal), out / str(jobs), jobs=jobs, benchmark=False))
        by_name = {r["name"]: r for r in results}
        assert by_name["a_dies"]["exit_code"] == ExitCode.INTERNAL_ERROR
        assert "worker process died" in by_name["a_dies"]["error"]
        assert by_name["b_normal"]["exit_code"] == 0, by_name["b_normal"]["error"]
        assert merge_exit_codes([r["exit_code"] for r in results]) == ExitCode.INTERNAL_ERROR
        assert (out / str(jobs) / "b_normal" / "model.onnx").is_file()


def test_a_bug_in_exporter_is_exit_5_with_its_traceback_in_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(options: Any) -> Any:
        raise RuntimeError("kaboom in export")

    monkeypatch.setattr("exporter.pipeline.export", boom)
    recipe = _recipe(tmp_path / "recipes", "buggy", "mlp")
    result = run_recipe(recipe, out=tmp_path / "out", threads=1, benchmark=False)
    assert result["exit_code"] == ExitCode.INTERNAL_ERROR and result["name"] == "buggy"
    detail = result["error"]
    assert "RuntimeError: kaboom in export" in detail and "traceback written to " in detail
    log = Path(detail.split("traceback written to ", 1)[1].split(" ", 1)[0])
    try:
        text = log.read_text()
        assert "Traceback" in text and "RuntimeError" in text and "kaboom in export" in text
    finally:
        log.unlink()
    assert result["checks"] == [{"name": "export", "kind": "export", "passed": False, "detail": detail}]
    assert "\n" not in detail


@pytest.mark.slow
def test_a_recipe_that_cannot_convert_makes_the_run_exit_3(tmp_path: Path) -> None:
    recipes, out, report = tmp_path / "recipes", tmp_path / "out", tmp_path / "run.json"
    _recipe(recipes, "opaque", "opaque")
    _recipe(recipes, "passes", "mlp")
    code, output = _invoke("run", recipes, "--out", out, "--jobs", "2", "--no-benchmark", "--json", report)
    assert code == ExitCode.CONVERSION_FAILED, output
    document = json.loads(report.read_text())
    by_name = {r["name"]: r for r in document["recipes"]}
    assert document["exit_code"] == ExitCode.CONVERSION_FAILED
    assert by_name["opaque"]["exit_code"] == ExitCode.CONVERSION_FAILED
    assert "exporter_tests" in by_name["opaque"]["error"]
    assert by_name["passes"]["exit_code"] == 0
    assert not (out / "opaque").exists() and (out / "passes" / "model.onnx").is_file()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found |= {int(child) for child in children.read_text().split()}
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    """Running or a zombie nobody reaped: either way, not cleaned up."""
    return Path(f"/proc/{pid}").exists()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def _wait_for_staging(process: subprocess.Popen[bytes], out: Path, names: set[str]) -> list[Path]:
    """Poll until every recipe's worker is writing its ``.NAME.partial-PID-*`` staging folder."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        staging = list(out.glob(".*.partial-*")) if out.is_dir() else []
        if {p.name[1:].split(".partial-")[0] for p in staging} == names:
            return staging
        time.sleep(0.1)
    output = process.communicate()[0].decode() if process.poll() is not None else "still running"
    raise AssertionError(f"no staging folder for each of {sorted(names)} under {out}: {output}")


def _assert_reports_interrupted(report: Path, junit: Path, signum: int, names: set[str]) -> None:
    """JSON: the run's and each recipe's exit code is the signal's; JUnit: one ``error`` per recipe."""
    expected = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    document = json.loads(report.read_text())
    assert document["exit_code"] == expected and {r["name"] for r in document["recipes"]} == names
    said = f"interrupted by {signal.Signals(signum).name}"
    for result in document["recipes"]:
        assert result["exit_code"] == expected and result["checks"][0]["kind"] == "interrupted"
        assert said in result["error"]
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    assert set(suites) == names
    for suite in suites.values():
        errors = [e for case in suite.iter("testcase") for e in case.iter("error")]
        assert suite.get("errors") == "1" and len(errors) == 1
        assert said in (errors[0].get("message") or "")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_worker_and_still_writes_junit_and_json(tmp_path: Path, signum: int) -> None:
    recipes, out = tmp_path / "recipes", tmp_path / "out"
    junit, report = tmp_path / "junit.xml", tmp_path / "run.json"
    names = {"slow_a", "slow_b", "slow_c"}  # --jobs 2: slow_c waits in the queue when the signal comes
    for name in names:
        _linear_recipe(recipes, name, _SLOW, "build")
        with (recipes / f"{name}.toml").open("a") as handle:
            handle.write('onnx_exporter = "torchscript"\n')  # a trace runs Python's time.sleep; dynamo not
    command = [sys.executable, "-m", "exporter", "run", str(recipes), "--out", str(out), "--jobs", "2"]
    command += ["--no-benchmark", "--junit", str(junit), "--json", str(report)]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        staging = _wait_for_staging(process, out, {"slow_a", "slow_b"})
        children = _children(process.pid)
        workers = {int(p.name.split(".partial-")[1].split("-")[0]) for p in staging}
        assert workers <= children
        process.send_signal(signum)  # the parent only: it must forward the signal itself
        output = process.communicate(timeout=120)[0].decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    expected = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    assert process.returncode == expected, output
    assert "Traceback" not in output, output
    assert not any(_alive(pid) for pid in workers), output
    grace = time.monotonic() + 5  # multiprocessing's resource tracker exits once its pipe closes
    while any(_alive(pid) for pid in children) and time.monotonic() < grace:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)
    _assert_reports_interrupted(report, junit, signum, names)
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in left if ".partial-" in n or ".old-" in n or n.endswith(".lock")], left
    assert not any((out / name).exists() for name in names)
    before = _snapshot(tmp_path)
    time.sleep(3)
    assert _snapshot(tmp_path) == before
