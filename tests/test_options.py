"""One merge of recipe and flags (``exporter.options``), shared by ``exporter export`` and ``exporter run``,
and one list of choices per option, shared by the CLI flags and recipe validation."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.convert.compile import CompileMode
from exporter.convert.onnx import OnnxExporterChoice
from exporter.convert.torchscript import TorchScriptMode
from exporter.errors import ExitCode, InputSpecError, LoadError, RecipeError, UsageError
from exporter.gate.runs import run_recipe
from exporter.options import build_export_options
from exporter.quantize.calibration import CalibrationMethod
from exporter.quantize.types import QuantMode
from exporter.recipe.document import load_recipe
from exporter.specs.inputs import DimSpec

RECIPE = """\
schema_version = 1
name = "from_recipe"

[model]
checkpoint = "model.pt"

[inputs]
specs = ["x:float32:batch=1,4", "y:float32:batch=1,2"]
dims.batch = { max = 64 }

[export]
opset = 17
torchscript_mode = "trace"

[verify]
atol = 0.5
seed = 3

[quantize]
mode = "dynamic"
min_cosine = 0.9
"""


def _recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    (tmp_path / "model.pt").write_bytes(b"only its existence is checked here")
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_flags_override_the_recipe_and_none_leaves_it(tmp_path: Path) -> None:
    options = build_export_options(
        _recipe(tmp_path),
        {"atol": 0.01, "opset": None, "torchscript_mode": "script", "name": None, "threads": 2},
        {"min_cosine": 0.95, "samples": None},
        {"steps": ("none",)},
    )
    assert (options.atol, options.opset, options.seed) == (0.01, 17, 3)
    assert (options.torchscript_mode, options.name, options.threads) == ("script", "from_recipe", 2)
    assert options.quantization.mode is QuantMode.DYNAMIC  # [quantize] merges key by key
    assert (options.quantization.min_cosine, options.quantization.samples) == (0.95, 64)
    assert options.optimization.steps == ("none",)
    assert options.checkpoint == tmp_path / "model.pt"


def test_input_flag_replaces_the_recipe_input_of_that_name(tmp_path: Path) -> None:
    options = build_export_options(_recipe(tmp_path), {}, input_texts=["y:float32:batch=1,7", "z:int64:3"])
    tensors = {t.name: t for t in options.spec.tensors}
    assert list(tensors) == ["x", "y", "z"]
    assert tensors["x"].dims == (DimSpec(1, "batch"), DimSpec(4))
    assert tensors["y"].dims == (DimSpec(1, "batch"), DimSpec(7))
    assert [(d.label, d.max) for d in options.spec.dynamic_dims] == [("batch", 64)]


def test_a_loaded_recipe_is_taken_as_is(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path))
    options = build_export_options(recipe, {"out": tmp_path / "o", "force": True, "benchmark": False})
    assert (options.out, options.force, options.benchmark, options.atol) == (tmp_path / "o", True, False, 0.5)


def test_flags_alone_need_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no CHECKPOINT given \(as an argument or in the recipe"):
        build_export_options(None, {"atol": 0.1}, input_texts=["x:float32:1"])


def test_a_missing_checkpoint_is_reported_before_a_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pt"
    with pytest.raises(LoadError, match=r"checkpoint '.*gone\.pt' does not exist"):
        build_export_options(None, {"checkpoint": missing}, input_texts=["not a spec"])
    (tmp_path / "gone.pt").write_bytes(b"")
    with pytest.raises(InputSpecError):
        build_export_options(None, {"checkpoint": missing}, input_texts=["not a spec"])


def test_export_and_run_fail_alike_on_a_recipe_without_checkpoint(tmp_path: Path) -> None:
    """``run`` once crashed here (exit 5, a TypeError from building options by hand); now both merge alike."""
    path = _recipe(tmp_path, RECIPE.replace('checkpoint = "model.pt"\n', ""))
    result = run_recipe(path, out=tmp_path / "runs", threads=1)
    cli = CliRunner().invoke(app, ["export", "--recipe", str(path)])
    assert result["exit_code"] == cli.exit_code == ExitCode.BAD_INPUT
    assert result["error"].startswith("error (usage): no CHECKPOINT given")
    assert result["error"] in " ".join(cli.output.split())


CHOICES: list[tuple[str, str, str, type[StrEnum]]] = [
    ("export", "onnx_exporter", "--onnx-exporter", OnnxExporterChoice),
    ("export", "torchscript_mode", "--torchscript-mode", TorchScriptMode),
    ("export", "compile_mode", "--compile-mode", CompileMode),
    ("quantize", "mode", "--quantize", QuantMode),
    ("quantize", "method", "--calibration-method", CalibrationMethod),
]


@pytest.mark.parametrize(("section", "key", "flag", "choices"), CHOICES)
def test_recipe_and_flag_accept_the_same_choices(
    tmp_path: Path, section: str, key: str, flag: str, choices: type[StrEnum]
) -> None:
    values = [c.value for c in choices]
    for value in values:
        assert load_recipe(_recipe(tmp_path, f'[{section}]\n{key} = "{value}"\n')).settings
    for bad in ('"bogus"', '["auto"]', "1"):
        with pytest.raises(RecipeError) as caught:
            load_recipe(_recipe(tmp_path, f"[{section}]\n{key} = {bad}\n"))
        assert f"[{section}].{key} must be one of {', '.join(values)}, got" in str(caught.value)
    for value in values:  # the flag parses, so the command gets as far as asking for a checkpoint
        said = CliRunner().invoke(app, ["export", flag, value]).output
        assert "no CHECKPOINT given" in said, said
    said = CliRunner().invoke(app, ["export", flag, "bogus"]).output
    assert "no CHECKPOINT given" not in said and "bogus" in said


def test_recipe_skip_and_not_applicable_leave_targets_out_and_the_flag_replaces_them(tmp_path: Path) -> None:
    text = RECIPE.replace(
        "[export]\n",
        '[export]\ntargets = ["all"]\nskip = ["compile"]\nnot_applicable.openvino = "no IR here"\n',
    )
    recipe = _recipe(tmp_path, text)
    assert build_export_options(recipe, {}).chosen_targets == ("onnx", "torchscript")
    flagged = build_export_options(recipe, {"skip": ("torchscript",)})
    assert flagged.chosen_targets == ("onnx", "compile", "openvino")
    named = build_export_options(recipe, {"targets": ("onnx", "openvino")})  # --to names it: wanted
    assert named.chosen_targets == ("onnx", "openvino")


def test_skip_flag_splits_commas_and_refuses_leaving_nothing(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    result = CliRunner().invoke(
        app, ["export", "--recipe", str(recipe), "--to", "onnx", "--to", "compile", "--skip", "onnx,compile"]
    )
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "leaves no target" in result.output
