"""The names an export gives: the model's (from --name, --out, the recipe or the checkpoint) and its outputs'
(--output-names, decided once by the reference runner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.errors import UsageError
from exporter.options import ExportOptions, build_export_options
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec, parse_tensor_spec, shape_cases
from exporter.specs.naming import parse_output_names
from exporter.verify.parity import make_golden
from tests.models import MODELS

SPEC = InputSpec(tuple(parse_tensor_spec(s) for s in MODELS["tuple_encoder"].inputs))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "encoder_state.pt"
    torch.save({"model_state": MODELS["tuple_encoder"].build().state_dict(), "step": 3}, path)
    return path


def _recipe(tmp_path: Path, checkpoint: Path, name: str | None = "speaker") -> Path:
    path = tmp_path / "encoder.toml"
    head = f'name = "{name}"\n' if name else ""
    path.write_text(
        f'schema_version = 1\n{head}[model]\ncheckpoint = "{checkpoint.name}"\n'
        f'[inputs]\nspecs = ["x:float32:batch=2,6"]\n'
    )
    return path


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("artifacts/encoder", "encoder"),
        ("artifacts/my encoder (v2)", "my_encoder__v2_"),
        (None, "encoder_state"),
    ],
)
def test_the_out_folder_names_the_model_before_the_checkpoint(
    checkpoint: Path, out: str | None, expected: str
) -> None:
    options = ExportOptions.from_settings({"checkpoint": checkpoint, "spec": SPEC, "out": out})
    assert options.model_name == expected


@pytest.mark.parametrize(
    ("flags", "recipe_name", "expected"),
    [
        ({"name": "given", "out": "artifacts/encoder"}, "speaker", "given"),
        ({"out": "artifacts/encoder"}, "speaker", "speaker"),
        ({"out": "artifacts/encoder"}, None, "encoder"),
        ({}, "speaker", "speaker"),
        ({}, None, "encoder_state"),
    ],
)
def test_name_then_recipe_name_then_out_folder_then_checkpoint_stem(
    tmp_path: Path, checkpoint: Path, flags: dict[str, str], recipe_name: str | None, expected: str
) -> None:
    options = build_export_options(_recipe(tmp_path, checkpoint, recipe_name), flags)
    assert options.model_name == expected
    assert options.out_dir == Path(flags.get("out", f"artifacts/{expected}"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,a", "a given twice"),
        ("emb,1st", "'1st' is not an identifier"),
        ("emb,", "'' is not an identifier"),
        ("emb,sc\u00f6re", "is not an identifier"),
    ],
)
def test_output_names_text_is_checked(text: str, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_output_names(text)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_output_names_are_split_on_commas_in_order() -> None:
    assert parse_output_names("embedding, energy,scores") == ("embedding", "energy", "scores")


def test_an_output_named_like_an_input_is_refused(checkpoint: Path) -> None:
    with pytest.raises(UsageError, match="x is also an input's name"):
        ExportOptions.from_settings({"checkpoint": checkpoint, "spec": SPEC, "output_names": ["x", "b", "c"]})


def test_the_reference_runner_names_the_outputs_and_the_golden_cases_carry_them() -> None:
    runner = EagerRunner(MODELS["tuple_encoder"].build(), SPEC.names, ("embedding", "energy", "scores"))
    golden = make_golden(runner, SPEC, shape_cases(SPEC)[:1], seed=0)
    assert golden[0].output_names == ["embedding", "energy", "scores"]
    assert [o.shape for o in golden[0].outputs] == [(2, 4), (2,), (2, 3)]


def test_without_names_a_tuple_keeps_its_positions() -> None:
    runner = EagerRunner(MODELS["tuple_encoder"].build(), SPEC.names)
    runner.run({"x": np.zeros((2, 6), np.float32)})
    assert runner.output_names == ["0", "1", "2"]


def test_a_wrong_count_of_output_names_is_a_usage_error_giving_the_count() -> None:
    runner = EagerRunner(MODELS["tuple_encoder"].build(), SPEC.names, ("embedding", "scores"))
    with pytest.raises(UsageError) as caught:  # not an InputSpecError blaming the inputs
        make_golden(runner, SPEC, shape_cases(SPEC)[:1], seed=0)
    message = str(caught.value)
    assert "gives 2 names (embedding, scores) but the model returns 3 outputs ('0', '1', '2')" in message
