"""Multiple-of dims downstream of the spec (issue 23): recipes write ``multiple_of``, a command-line range
replaces the recipe's, the manifest and the server keep the multiples, and an AOTInductor package of
``ceil_pool`` (two ceil-mode MaxPool2d, as face detectors have) is verified at the declared maximum.
torch.export's derived dims are in test_dynamic_shapes.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from exporter.documents.manifest import DynamicDimEntry, read_manifest
from exporter.errors import ExitCode, RecipeError
from exporter.options import build_export_options
from exporter.pipeline import ExportOptions, export
from exporter.recipe.document import load_recipe
from exporter.serving.protocol import InputRule, ModelSignature, OutputInfo, RequestError, parse_infer_request
from exporter.serving.signature import signature_of
from exporter.specs.inputs import DynamicDim, InputSpec, parse_tensor_spec

FACE_SPEC = "image:float32:batch=1..4,3,h=64..512%4,w=64..512%4"


def _spec(*texts: str, dims: tuple[DynamicDim, ...] = ()) -> InputSpec:
    return InputSpec(tuple(parse_tensor_spec(t) for t in texts), dims)


# --- recipe and command line ---------------------------------------------------------------------------


def _recipe(tmp_path: Path, dims: str) -> Path:
    (tmp_path / "model.pt").write_bytes(b"not read")
    path = tmp_path / "recipe.toml"
    path.write_text(
        'schema_version = 1\n[model]\ncheckpoint = "model.pt"\n'
        f'[inputs]\nspecs = ["image:float32:batch=2,3,h=64,w=64"]\n{dims}\n',
        encoding="utf-8",
    )
    return path


def test_recipe_multiple_of_reaches_the_spec(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "dims.h = { min = 64, max = 512, multiple_of = 4 }")
    assert load_recipe(path).dims == (DynamicDim("h", 64, 512, 4),)
    options = build_export_options(path, {})
    assert options.spec.dim("h") == DynamicDim("h", 64, 512, 4)
    assert options.spec.dim("w") == DynamicDim("w")


@pytest.mark.parametrize("value", ["0", "-4", "2.5", "true", '"4"'])
def test_recipe_multiple_of_must_be_a_positive_integer(tmp_path: Path, value: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(_recipe(tmp_path, f"dims.h = {{ multiple_of = {value} }}"))
    assert "[inputs.dims].h.multiple_of must be an integer >= 1" in str(info.value)


def test_a_command_line_range_replaces_the_recipes(tmp_path: Path) -> None:
    path = _recipe(
        tmp_path, "dims.batch = { min = 1, max = 8 }\ndims.h = { min = 64, max = 512, multiple_of = 4 }"
    )
    options = build_export_options(path, {}, input_texts=["image:float32:batch=1..16,3,h=32..256%8,w=64"])
    assert options.spec.dim("batch") == DynamicDim("batch", 1, 16)
    assert options.spec.dim("h") == DynamicDim("h", 32, 256, 8)
    kept = build_export_options(path, {}, input_texts=["image:float32:batch=2,3,h=64,w=64"])
    assert kept.spec.dim("h") == DynamicDim("h", 64, 512, 4)  # no range written: the recipe's stands


# --- what reads the range later ------------------------------------------------------------------------


def test_the_manifest_entry_keeps_old_manifests_readable_and_writes_the_multiple_only_when_set() -> None:
    old = DynamicDimEntry.model_validate({"min": 1, "max": None, "example": 2})
    assert old.multiple_of == 1 and "multiple_of" not in old.model_dump_json()
    new = DynamicDimEntry.model_validate({"min": 64, "max": 512, "example": 64, "multiple_of": 4})
    assert json.loads(new.model_dump_json())["multiple_of"] == 4
    with pytest.raises(ValueError, match="multiple_of"):
        DynamicDimEntry.model_validate({"min": 1, "max": None, "example": 2, "multiple_of": 0})


def test_the_server_refuses_a_size_that_is_not_a_multiple_like_one_out_of_range() -> None:
    signature = ModelSignature(
        "face",
        (InputRule("image", np.dtype("float32"), ("batch", 3, "h", 4), False, None),),
        (OutputInfo("score", np.dtype("float32"), (-1, 2, -1, 1)),),
        {"batch": (1, 4), "h": (64, 512)},
        "batch",
        {"h": 4},
    )

    def body(h: int) -> bytes:
        data = [0.0] * (3 * h * 4)
        return json.dumps(
            {"inputs": [{"name": "image", "shape": [1, 3, h, 4], "datatype": "FP32", "data": data}]}
        ).encode()

    assert parse_infer_request(body(68), signature).inputs["image"].shape == (1, 3, 68, 4)
    with pytest.raises(RequestError) as caught:
        parse_infer_request(body(66), signature)
    assert caught.value.field == "inputs[0].shape[2]"
    assert "h=66 is not a multiple of 4" in caught.value.message
    with pytest.raises(RequestError, match="outside its declared range"):
        parse_infer_request(body(516), signature)


@pytest.mark.slow
def test_aot_inductor_packages_the_face_detector_verified_at_the_declared_maximum(
    options_for: Callable[..., ExportOptions],
) -> None:
    """The issue's reproduction: ``--to all`` with ``h=64..512%4,w=64..512%4`` got no AOTInductor package;
    now every backend passes every case, ``max`` (4 x 3 x 512 x 512) included, and the manifest, the
    server's signature and ``exporter verify``'s reading of the spec keep the multiples."""
    options = options_for("ceil_pool", spec=_spec(FACE_SPEC), targets=("onnx", "compile"), benchmark=False)
    result = export(options)
    assert result.exit_code is ExitCode.OK
    assert {b.backend for b in result.backends} >= {"onnxruntime", "aotinductor"}
    assert {p.backend for p in result.parity} >= {"onnxruntime", "aotinductor"}
    for parity in result.parity:
        passed = {c.case: c.passed for c in parity.cases}
        assert passed.get("max") and all(passed.values()), (parity.backend, passed)
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["input_spec"]["dynamic_dims"]["h"] == {
        "min": 64,
        "max": 512,
        "example": 64,
        "multiple_of": 4,
    }
    manifest = read_manifest(result.out_dir)
    max_case = next(g for g in manifest.golden if getattr(g, "case", None) == "max")
    assert max_case.sizes == {"batch": 4, "h": 512, "w": 512}  # type: ignore[union-attr]
    assert signature_of(result.out_dir, manifest).dim_multiples == {"h": 4, "w": 4}
    assert manifest.input_spec.inputs[0].spec == FACE_SPEC
