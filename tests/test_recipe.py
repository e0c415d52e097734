"""Recipes: TOML files validated on load, with errors that name the offending key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import RecipeError, UsageError
from exporter.quantize.search import QuantizeOptions
from exporter.recipe.document import RECIPE_SCHEMA_VERSION, load_recipe
from exporter.specs.inputs import DimSpec, DynamicDim

FULL_RECIPE = """\
schema_version = 1
name = "digits_cnn"
description = "a small CNN"

[model]
checkpoint = "weights/digits_cnn.pt"
factory = "../src/model.py:build_model"
kwargs = { width = 16, name = "cnn" }
trust_checkpoint = true

[inputs]
specs = ["image:float32:batch=1,1,8,8", "ids:int64:batch=1,seq=4:0..100"]
dims.batch = { min = 1, max = 256 }
dims.seq = { max = 64 }

[export]
targets = ["onnx", "torchscript"]
opset = 18
onnx_exporter = "dynamo"
simplify = false
torchscript_mode = "script"
compile_mode = "max-autotune"

[verify]
atol = 1e-5
rtol = 0.01
seed = 7

[benchmark]
threads = 2
batch_dim = "batch"
batch_sizes = [1, 4, 16]
enabled = false
"""


def write(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text))
    return str(info.value)


def test_full_recipe_settings(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").touch()  # recipes/ and src/ are one project, so ../src may be named
    path = write(tmp_path, FULL_RECIPE, name="recipes/digits.toml")
    recipe = load_recipe(path)
    folder = path.resolve().parent
    assert recipe.path == path
    assert recipe.settings == {
        "name": "digits_cnn",
        "checkpoint": folder / "weights/digits_cnn.pt",
        "model_ref": f"{(folder.parent / 'src' / 'model.py')}:build_model",
        "model_kwargs": {"width": 16, "name": "cnn"},
        "trust_checkpoint": True,
        "targets": ["onnx", "torchscript"],
        "opset": 18,
        "onnx_exporter": "dynamo",
        "simplify": False,
        "torchscript_mode": "script",
        "compile_mode": "max-autotune",
        "atol": 1e-5,
        "rtol": 0.01,
        "seed": 7,
        "threads": 2,
        "batch_dim": "batch",
        "batch_sizes": [1, 4, 16],
        "benchmark": False,
    }


def test_full_recipe_inputs_and_dims(tmp_path: Path) -> None:
    write(tmp_path / "project", "", name="pyproject.toml")
    recipe = load_recipe(write(tmp_path / "project" / "recipes", FULL_RECIPE))
    assert [t.name for t in recipe.inputs] == ["image", "ids"]
    assert recipe.inputs[0].dims == (DimSpec(1, "batch"), DimSpec(1), DimSpec(8), DimSpec(8))
    assert (recipe.inputs[1].low, recipe.inputs[1].high) == (0, 100)
    assert recipe.dims == (DynamicDim("batch", 1, 256), DynamicDim("seq", 1, 64))


def test_empty_recipe_sets_nothing(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, ""))
    assert recipe.settings == {}
    assert recipe.inputs == ()
    assert recipe.dims == ()


def test_only_what_the_file_sets_is_in_settings(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "[verify]\natol = 0.5\n"))
    assert recipe.settings == {"atol": 0.5}


def test_checkpoint_is_relative_to_the_recipe_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[model]\ncheckpoint = "model.pt"\n', name="deep/er/recipe.toml")
    monkeypatch.chdir(tmp_path)
    checkpoint = load_recipe(Path("deep/er/recipe.toml")).settings["checkpoint"]
    assert Path(checkpoint) == path.resolve().parent / "model.pt"
    assert Path(checkpoint).is_absolute()


def test_absolute_checkpoint_stays_absolute(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "model.pt"
    path = write(tmp_path, f'[model]\ncheckpoint = "{target.as_posix()}"\n', name="sub/recipe.toml")
    assert Path(load_recipe(path).settings["checkpoint"]) == target


def test_file_factory_is_relative_to_the_recipe(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\nfactory = "models/net.py:build"\n', name="sub/recipe.toml")
    ref = load_recipe(path).settings["model_ref"]
    module, _, attr = ref.rpartition(":")
    assert attr == "build"
    assert Path(module) == path.resolve().parent / "models" / "net.py"


def test_module_factory_stays_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\nfactory = "pkg.models:build_model"\n', name="sub/recipe.toml")
    assert load_recipe(path, ["pkg"]).settings["model_ref"] == "pkg.models:build_model"


def test_absolute_factory_path_stays_as_written(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").touch()  # net.py is in the recipe's project
    ref = f"{(tmp_path / 'net.py').as_posix()}:build"
    path = write(tmp_path, f'[model]\nfactory = "{ref}"\n', name="sub/recipe.toml")
    assert load_recipe(path).settings["model_ref"] == ref


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(RecipeError, match="does not exist") as info:
        load_recipe(path)
    assert "nope.toml" in str(info.value)


def test_directory_is_not_readable(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot be read"):
        load_recipe(tmp_path)


@pytest.mark.parametrize("text", ["[model\n", "name = \n", "a = 1\na = 2\n", 'name = "unterminated\n'])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    assert "not valid TOML" in load_error(tmp_path, text)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'nmae = "typo"\n')
    assert "unknown key 'nmae'" in message


def test_unknown_top_level_table(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[exprot]\nopset = 17\n")
    assert "unknown key 'exprot'" in message


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("model", "chekpoint"),
        ("inputs", "spec"),
        ("export", "opset_version"),
        ("verify", "tolerance"),
        ("benchmark", "runs"),
    ],
)
def test_unknown_key_in_a_section(tmp_path: Path, section: str, key: str) -> None:
    message = load_error(tmp_path, f"[{section}]\n{key} = 1\n")
    assert f"unknown key '{key}' in [{section}]" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("schema_version = true\n", "'schema_version'"),
        ('schema_version = "1"\n', "'schema_version'"),
        ('name = ""\n', "'name'"),
        ("name = 3\n", "'name'"),
        ("description = 1\n", "'description'"),
        ("[model]\ncheckpoint = 1\n", "[model].checkpoint"),
        ('[model]\nfactory = "no_colon"\n', "[model].factory"),
        ('[model]\nkwargs = "width=16"\n', "[model].kwargs"),
        ('[model]\ntrust_checkpoint = "yes"\n', "[model].trust_checkpoint"),
        ('[inputs]\nspecs = "x:float32:1"\n', "[inputs].specs"),
        ("[inputs]\nspecs = [1]\n", "[inputs].specs"),
        ("[inputs]\ndims = 3\n", "[inputs].dims"),
        ('[export]\ntargets = "onnx"\n', "[export].targets"),
        ('[export]\ntargets = ["tflite"]\n', "[export].targets"),
        ('[export]\ntorchscript_mode = "freeze"\n', "[export].torchscript_mode"),
        ('[export]\ncompile_mode = "fast"\n', "[export].compile_mode"),
        ("[export]\nopset = 6\n", "[export].opset"),
        ("[export]\nopset = 31\n", "[export].opset"),
        ('[export]\nopset = "17"\n', "[export].opset"),
        ("[export]\nsimplify = 1\n", "[export].simplify"),
        ("[verify]\natol = -1e-4\n", "[verify].atol"),
        ('[verify]\nrtol = "0.1"\n', "[verify].rtol"),
        ("[verify]\natol = true\n", "[verify].atol"),
        ("[verify]\nseed = 1.5\n", "[verify].seed"),
        ("[benchmark]\nthreads = 0\n", "[benchmark].threads"),
        ("[benchmark]\nthreads = true\n", "[benchmark].threads"),
        ("[benchmark]\nbatch_dim = 0\n", "[benchmark].batch_dim"),
        ("[benchmark]\nbatch_sizes = [1, 0]\n", "[benchmark].batch_sizes"),
        ("[benchmark]\nbatch_sizes = [1, true]\n", "[benchmark].batch_sizes"),
        ("[benchmark]\nbatch_sizes = 8\n", "[benchmark].batch_sizes"),
        ('[benchmark]\nenabled = "no"\n', "[benchmark].enabled"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert key in load_error(tmp_path, text)


@pytest.mark.parametrize("choice", ["auto", "dynamo", "torchscript"])
def test_onnx_exporter_choices(tmp_path: Path, choice: str) -> None:
    recipe = load_recipe(write(tmp_path, f'[export]\nonnx_exporter = "{choice}"\n'))
    assert recipe.settings["onnx_exporter"] == choice


@pytest.mark.parametrize("choice", ["torch_script", "Dynamo", ""])
def test_bad_onnx_exporter_choice(tmp_path: Path, choice: str) -> None:
    message = load_error(tmp_path, f'[export]\nonnx_exporter = "{choice}"\n')
    assert "[export].onnx_exporter" in message
    assert "auto, dynamo, torchscript" in message


def test_int_tolerance_is_accepted(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, "[verify]\natol = 0\n")).settings == {"atol": 0}


def test_unsupported_schema_version(tmp_path: Path) -> None:
    message = load_error(tmp_path, f"schema_version = {RECIPE_SCHEMA_VERSION + 1}\n")
    assert "schema_version" in message
    assert str(RECIPE_SCHEMA_VERSION + 1) in message


def test_current_schema_version_is_accepted(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, f'schema_version = {RECIPE_SCHEMA_VERSION}\nname = "m"\n'))
    assert recipe.settings == {"name": "m"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [("image:float33:1,3", "DTYPE"), ("image:float32:1,x", "dim 'x'"), ("image", "NAME:DTYPE:DIMS")],
)
def test_bad_spec_inside_specs(tmp_path: Path, spec: str, field: str) -> None:
    message = load_error(tmp_path, f'[inputs]\nspecs = ["x:float32:2", "{spec}"]\n')
    assert "[inputs].specs" in message
    assert field in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[inputs]\ndims.batch = 3\n", "[inputs.dims].batch"),
        ("[inputs]\ndims.batch = { min = 1, step = 2 }\n", "[inputs.dims].batch"),
        ("[inputs]\ndims.batch = { min = -1 }\n", "[inputs.dims].batch.min"),
        ("[inputs]\ndims.batch = { max = 2.5 }\n", "[inputs.dims].batch.max"),
        ("[inputs]\ndims.batch = { max = true }\n", "[inputs.dims].batch.max"),
    ],
)
def test_bad_dim_ranges(tmp_path: Path, text: str, key: str) -> None:
    assert key in load_error(tmp_path, text)


@pytest.mark.parametrize("section", ["model", "verify"])
def test_section_that_is_not_a_table(tmp_path: Path, section: str) -> None:
    """``model = "x"`` names a known section with the wrong type; calling it unknown would mislead."""
    message = load_error(tmp_path, f'{section} = "x"\n')
    assert section in message
    assert "unknown key" not in message


def test_error_is_a_bad_input_exit(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "bogus = 1\n"))
    assert info.value.stage == "recipe"
    assert int(info.value.exit_code) == 2


# --- values that used to pass validation and fail (or do damage) later --------------------------------


@pytest.mark.parametrize(
    "name", ["/some/abs/dir", "../../x", "..", ".", ".hidden", "a/b", "a\\\\b", "x" * 101, "caf\u00e9", " x"]
)
def test_name_must_be_one_safe_folder_name(tmp_path: Path, name: str) -> None:
    """``exporter run`` makes ``--out/<name>``: ``../../x`` or an absolute name deleted a folder outside."""
    message = load_error(tmp_path, f'name = "{name}"\n')
    assert "'name' must be a folder name" in message
    assert "at most 100 characters" in message


@pytest.mark.parametrize("name", ["digits_cnn", "zoo-mlp.v2", "x" * 100, "2024_model"])
def test_safe_names_are_accepted_and_a_path_around_them_is_not(tmp_path: Path, name: str) -> None:
    assert load_recipe(write(tmp_path, f'name = "{name}"\n')).settings == {"name": name}
    assert "'name' must be a folder name" in load_error(tmp_path, f'name = "../{name}"\n')


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[verify]\natol = nan\n", "[verify].atol"),
        ("[verify]\nrtol = inf\n", "[verify].rtol"),
        ("[quantize]\nmin_sqnr_db = nan\n", "[quantize].min_sqnr_db"),
        ("[quantize]\nmax_abs = inf\n", "[quantize].max_abs"),
        ("[quantize]\nqat_lr = inf\n", "[quantize].qat_lr"),
        ("[optimize]\nmax_slowdown = nan\n", "[optimize].max_slowdown"),
        ("[verify]\nseed = -1\n", "[verify].seed"),
        ("[benchmark]\nthreads = 99999999999999999999\n", "[benchmark].threads"),
    ],
)
def test_non_finite_numbers_and_out_of_range_ints_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    """``nan`` passed ``_is_number``; a negative seed or a huge thread count failed only at run time."""
    message = load_error(tmp_path, text)
    assert key in message
    assert "\n" not in message


def test_deeply_nested_toml_is_a_recipe_error(tmp_path: Path) -> None:
    """tomllib recurses per nesting level: RecursionError escaped load_recipe."""
    message = load_error(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nests arrays or tables too deeply" in message


def test_overlong_calibration_reference_is_not_an_os_error(tmp_path: Path) -> None:
    """``Path.exists()`` raised OSError (name too long) out of load_recipe."""
    ref = "x" * 5000 + ":load"
    recipe = load_recipe(write(tmp_path, f'[quantize]\ncalibration = "{ref}"\n'), ["x" * 5000])
    assert recipe.settings["quantization"]["calibration"] == ref


def test_quoted_key_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, '"a\\nb" = 1\n')
    assert "unknown key 'a\\nb'" in message
    assert "\n" not in message


def test_dim_label_must_be_an_identifier(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[inputs]\ndims."a b" = { min = 1 }\n')
    assert "[inputs.dims] key 'a b' is not a dim label" in message


def test_bad_spec_in_a_recipe_names_the_non_ascii_character(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[inputs]\nspecs = ["x:float32:\uff11"]\n')
    assert "[inputs].specs" in message
    assert "U+FF11 FULLWIDTH DIGIT ONE" in message


# --- int8 budget: the same range checks for a recipe and for command-line flags -----------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_cosine": 5}, "--min-cosine 5 is outside [-1, 1]"),
        ({"min_cosine": float("nan")}, "--min-cosine nan is outside [-1, 1]"),
        ({"min_top1": 1.5}, "--min-top1 1.5 is outside [0, 1]"),
        ({"min_sqnr_db": float("inf")}, "--min-sqnr inf must be a finite number of dB"),
        ({"samples": 0}, "--calibration-samples 0 must be an integer >= 1"),
        ({"max_float_layers": -1}, "[quantize].max_float_layers -1 must be an integer >= 0"),
        ({"qat_steps": -5}, "[quantize].qat_steps -5 must be an integer >= 0"),
        ({"qat_lr": 0.0}, "[quantize].qat_lr 0 must be a finite number > 0"),
        ({"max_abs": -0.5}, "[quantize].max_abs -0.5 must be a finite number >= 0"),
        ({"mode": "int2"}, "--quantize 'int2' is not a mode"),
    ],
)
def test_quantize_options_check_the_budget(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:
        QuantizeOptions(**options)
    assert str(info.value).startswith(message)


def test_quantize_options_edges_are_legal() -> None:
    options = QuantizeOptions(min_cosine=-1, min_top1=1.0, min_sqnr_db=-10.0, max_abs=0.0, qat_steps=0)
    assert options.budget.min_cosine == -1
    with pytest.raises(UsageError, match=r"--min-cosine -1\.001 is outside"):
        QuantizeOptions(min_cosine=-1.001)


def test_cli_min_cosine_out_of_range_exits_2_before_any_work(tmp_path: Path) -> None:
    """``--min-cosine 5`` used to be accepted and fail only after a full run."""
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"never loaded: the flag is refused first")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            *("export", str(checkpoint), "--input", "x:float32:1,4", "--quantize", "static"),
            *("--to", "onnx", "--min-cosine", "5", "--out", str(out)),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--min-cosine 5 is outside [-1, 1]" in " ".join(result.output.split())
    assert not out.exists()


def test_fail_on_nonfinite_is_a_verify_key(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("schema_version = 1\n[verify]\nfail_on_nonfinite = true\n")
    assert load_recipe(recipe).settings["fail_on_nonfinite"] is True
    recipe.write_text('schema_version = 1\n[verify]\nfail_on_nonfinite = "yes"\n')
    with pytest.raises(RecipeError, match="fail_on_nonfinite"):
        load_recipe(recipe)


def test_state_dict_key_and_output_names_are_recipe_keys(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(
            tmp_path,
            'schema_version = 1\n[model]\nstate_dict_key = "checkpoint.model_state"\n'
            '[outputs]\nnames = ["embedding", "energy", "scores"]\n',
        )
    )
    assert recipe.settings == {
        "state_dict_key": "checkpoint.model_state",
        "output_names": ("embedding", "energy", "scores"),
    }


@pytest.mark.parametrize("names", ['["a", "a"]', '["a", "2b"]', "[]", '"a,b"'])
def test_output_names_that_are_not_distinct_identifiers_name_the_key(tmp_path: Path, names: str) -> None:
    message = load_error(tmp_path, f"schema_version = 1\n[outputs]\nnames = {names}\n")
    assert "[outputs].names must be a list of the outputs' names in order" in message


def test_external_data_is_a_boolean_export_setting(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text('name = "big"\n[export]\nexternal_data = true\n')
    assert load_recipe(path).settings["external_data"] is True
    path.write_text('name = "big"\n[export]\nexternal_data = "yes"\n')
    with pytest.raises(RecipeError, match=r"\[export\]\.external_data must be true or false, got 'yes'"):
        load_recipe(path)
