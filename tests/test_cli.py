"""The command line: the documented exit codes, one-line errors without tracebacks, flags over recipes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from tests.models import MODELS

runner = CliRunner()


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["export", *map(str, args)])
    return result.exit_code, result.output


def _model_args(name: str) -> list[str]:
    args = ["--model", MODELS[name].ref, "--no-benchmark"]
    for spec in MODELS[name].inputs:
        args += ["--input", spec]
    return args


def test_success_exits_0_and_prints_tables(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    code, output = _invoke(
        state_dict_checkpoint("mlp"), "--to", "onnx", *_model_args("mlp"), "--out", tmp_path / "a"
    )
    assert code == 0, output
    assert "Parity" in output and "PASSED" in output
    assert (tmp_path / "a" / "model.onnx").is_file()


def test_verification_failure_exits_1(tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]) -> None:
    code, output = _invoke(
        state_dict_checkpoint("frozen"),
        *_model_args("frozen"),
        "--onnx-exporter",
        "torchscript",
        "--out",
        tmp_path / "f",
    )
    assert code == 1, output
    assert "FAILED" in output and "frozen" in output
    assert (tmp_path / "f" / "report.json").is_file()


def test_conversion_failure_exits_3_naming_the_operator(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    code, output = _invoke(state_dict_checkpoint("opaque"), *_model_args("opaque"), "--out", tmp_path / "o")
    assert code == 3, output
    assert "exporter_tests" in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


def _bad_inputs(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[list[str | Path], str]]:
    pickled = tmp_path / "pickled.pt"
    torch.save(MODELS["mlp"].build(), pickled)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:200])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("x")
    bad_recipe = tmp_path / "bad.toml"
    bad_recipe.write_text("[verify]\natoll = 1\n")
    mlp = _model_args("mlp")
    return {
        "missing file": ([tmp_path / "nope.pt", *mlp], "does not exist"),
        "missing file, no inputs": ([tmp_path / "nope.pt"], "does not exist"),
        "truncated": ([truncated, *mlp], "truncated"),
        "untrusted pickle": ([pickled, *mlp], "--trust-checkpoint"),
        "bad spec": ([checkpoint, "--model", MODELS["mlp"].ref, "--input", "x:float33:4,16"], "DTYPE"),
        "no inputs": ([checkpoint, "--model", MODELS["mlp"].ref], "--input"),
        "wrong shape": (
            [checkpoint, "--model", MODELS["mlp"].ref, "--input", "x:float32:batch=4,15"],
            "fails on inputs",
        ),
        "bad kwargs": ([checkpoint, *mlp, "--model-kwargs", "{oops"], "--model-kwargs"),
        "occupied out": ([checkpoint, *mlp, "--out", occupied], "--force"),
        "bad recipe": ([checkpoint, *mlp, "--recipe", bad_recipe], "atoll"),
        "bad model ref": ([checkpoint, "--model", "nocolon", "--input", "x:float32:4,16"], "--model"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "missing file, no inputs",
        "truncated",
        "untrusted pickle",
        "bad spec",
        "no inputs",
        "wrong shape",
        "bad kwargs",
        "occupied out",
        "bad recipe",
        "bad model ref",
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    case: str, tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    args, expected = _bad_inputs(tmp_path, state_dict_checkpoint("mlp"))[case]
    out = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", out]
    code, output = _invoke(*args)
    assert code == 2, output
    assert expected in output
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1, output
    assert not out.exists()


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    args = ["export", str(tmp_path / "nope.pt"), "--input", "x:float32:1"]
    plain = runner.invoke(app, args)
    debug = runner.invoke(app, [*args, "--debug"])
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" in debug.output and "LoadError" in debug.output
    assert "does not exist" in debug.output.splitlines()[-1]
    assert "Traceback" not in plain.output


def test_flags_override_the_recipe(tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]) -> None:
    checkpoint = state_dict_checkpoint("attention")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f"""
schema_version = 1
name = "from_recipe"
[model]
checkpoint = "{checkpoint.name}"
factory = "tests.models:{MODELS["attention"].factory}"
[inputs]
specs = ["tokens:float32:batch=2,seq=7,32"]
dims.seq = {{ min = 2, max = 9 }}
[verify]
atol = 0.5
[benchmark]
enabled = false
"""
    )
    out = tmp_path / "o"
    args = [
        "export",
        "--recipe",
        str(recipe),
        "--allow-package",
        "tests",
        "--atol",
        "1e-3",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "from_recipe"  # the recipe names the model before the --out folder does
    assert manifest["tolerance"]["atol"] == 1e-3
    assert manifest["input_spec"]["dynamic_dims"]["seq"] == {"min": 2, "max": 9, "example": 7}
    cases = {g["case"]: g["sizes"]["seq"] for g in manifest["golden"]}
    assert cases["seq-min"] == 2 and cases["max"] == 9  # the recipe's declared maximum is verified


def test_help_documents_the_contract() -> None:
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    for flag in [
        "--to",
        "--model",
        "--model-kwargs",
        "--input",
        "--recipe",
        "--out",
        "--force",
        "--atol",
        "--rtol",
        "--opset",
        "--threads",
        "--trust-checkpoint",
        "--debug",
    ]:
        assert flag in result.output
    assert "NAME:DTYPE:DIMS" in result.output


@pytest.mark.slow
def test_python_dash_m_runs_the_same_cli(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    command = [
        sys.executable,
        "-m",
        "exporter",
        "export",
        str(state_dict_checkpoint("mlp")),
        *_model_args("mlp"),
    ]
    completed = subprocess.run(
        [*command, "--out", str(tmp_path / "m")], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "exporter", "export", str(tmp_path / "nope.pt"), "--input", "x:float32:1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr + missing.stdout
    assert "does not exist" in missing.stderr


def test_torchscript_target_prints_both_matrices(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    args = [a for a in _model_args("cell_stack") if a != "--no-benchmark"]
    code, output = _invoke(
        state_dict_checkpoint("cell_stack"),
        "--to",
        "torchscript",
        "--torchscript-mode",
        "script",
        *args,
        "--out",
        tmp_path / "ts",
    )
    assert code == 0, output
    assert "Parity matrix" in output and "Latency matrix" in output
    assert "torchscript" in output and "model.ts" in output
    assert (tmp_path / "ts" / "model.ts").is_file() and not (tmp_path / "ts" / "model.onnx").exists()


def test_trace_mode_on_a_time_loop_exits_1_and_suggests_script(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    code, output = _invoke(
        state_dict_checkpoint("cell_stack"),
        "--to",
        "torchscript",
        "--torchscript-mode",
        "trace",
        *_model_args("cell_stack"),
        "--out",
        tmp_path / "tr",
    )
    assert code == 1, output
    assert "tracing froze control flow" in output and "--torchscript-mode script" in output


def test_quantize_without_an_onnx_target_exits_2(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    code, output = _invoke(
        state_dict_checkpoint("mlp"),
        "--to",
        "torchscript",
        "--quantize",
        "int8",
        *_model_args("mlp"),
        "--out",
        tmp_path / "q",
    )
    assert code == 2, output
    assert "add --to onnx" in output and "Traceback" not in output
    assert not (tmp_path / "q").exists()


def test_unknown_target_exits_2(tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]) -> None:
    code, output = _invoke(state_dict_checkpoint("mlp"), "--to", "tensorrt", *_model_args("mlp"))
    assert code == 2
    assert "tensorrt" in output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--name", "../../escape"], "is not a safe name"),
        (["--seed", "-1"], "--seed"),
        (["--threads", "99999999999"], "--threads"),
    ],
)
def test_names_and_numbers_that_would_fail_later_exit_2_up_front(
    extra: list[str],
    message: str,
    tmp_path: Path,
    state_dict_checkpoint: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["export", str(state_dict_checkpoint("mlp")), *_model_args("mlp"), *extra]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "artifacts").exists() and not (tmp_path.parent / "escape").exists()


def test_help_keeps_the_defaults_it_documents() -> None:
    """Help texts are plain text: rich markup once swallowed every "[default: ...]" in them."""
    output = " ".join(runner.invoke(app, ["export", "--help"]).output.split())
    assert "Absolute tolerance [default: 1e-4]" in output
    assert "[default: 0.99]" in output
