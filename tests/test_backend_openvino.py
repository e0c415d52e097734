"""The OpenVINO backend: an IR verified at every shape case like every other backend, opened again by
``exporter verify`` with the plugin settings the manifest recorded, and never with settings it does not
know (a manifest may be hostile)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.backends.openvino import OPENVINO, checked_config, float_config
from exporter.backends.registry import OpenContext
from exporter.cli import app
from exporter.errors import UsageError
from exporter.options import ExportOptions
from exporter.pipeline import export
from exporter.recipe.document import load_recipe
from exporter.runners.openvino import OpenVinoRunner
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import make_inputs
from tests.models import MODELS

ZOO_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("zoo_*.toml"))


@pytest.fixture
def openvino_folder(tmp_path: Path, options_for: Callable[..., ExportOptions]) -> Path:
    options = options_for("mlp", targets=("onnx", "openvino"), benchmark=False)
    result = export(options)
    assert result.exit_code == 0
    return options.out_dir


def test_openvino_artifact_is_verified_and_records_its_plugin_settings(openvino_folder: Path) -> None:
    manifest = json.loads((openvino_folder / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["backend"] == OPENVINO.name)
    assert entry["file"] == "model.xml" and entry["verified"]
    assert entry["config"]["INFERENCE_PRECISION_HINT"] == "f32"  # bf16 is judged by the budget, not here
    assert {"model.xml", "model.bin"} <= set(manifest["files"])
    report = json.loads((openvino_folder / "report.json").read_text())
    backend = next(b for b in report["backends"] if b["backend"] == OPENVINO.name)
    assert backend["conversion"]["effective"]["INFERENCE_PRECISION_HINT"] == "f32"
    parity = [p for p in report["parity"] if p["backend"] == OPENVINO.name]
    assert parity[-1]["passed"] and len(parity[-1]["cases"]) >= 3


def test_verify_reopens_the_ir_with_the_recorded_settings(openvino_folder: Path) -> None:
    result = CliRunner().invoke(app, ["verify", str(openvino_folder)])
    assert result.exit_code == 0, result.output
    assert "parity openvino" in result.output


def test_verify_refuses_a_plugin_setting_exporter_never_writes(openvino_folder: Path) -> None:
    path = openvino_folder / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = next(a for a in manifest["artifacts"] if a["backend"] == OPENVINO.name)
    entry["config"]["CACHE_DIR"] = "/tmp/somewhere-else"
    path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["verify", str(openvino_folder)])
    assert result.exit_code != 0
    assert "CACHE_DIR" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "config",
    [{"CACHE_DIR": "/tmp/x"}, {"INFERENCE_PRECISION_HINT": "int4"}, {"INFERENCE_NUM_THREADS": "-1"}],
)
def test_checked_config_refuses_unknown_settings(config: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="refusing it"):
        checked_config(config)
    assert checked_config(float_config(2)) == float_config(2)


def test_ir_from_pytorch_matches_eager(tmp_path: Path) -> None:
    """The fallback when the ONNX model does not verify: ``ov.convert_model`` on the module itself."""
    from exporter.backends.openvino import _from_pytorch
    from exporter.specs.inputs import InputSpec, parse_tensor_spec

    model = MODELS["mlp"]
    module = model.build().eval()
    spec = InputSpec(tuple(parse_tensor_spec(s) for s in model.inputs))
    context = SimpleNamespace(
        options=SimpleNamespace(spec=spec, seed=0), loaded=SimpleNamespace(module=module), shared={}
    )
    xml = _from_pytorch(context, tmp_path / "model.xml")  # type: ignore[arg-type]
    assert xml.with_suffix(".bin").exists()
    assert OPENVINO.open is not None
    runner = OPENVINO.open(xml, OpenContext(spec, 2))
    assert isinstance(runner, OpenVinoRunner)
    with runner:
        for sizes in ({**spec.example_sizes}, dict.fromkeys(spec.example_sizes, 5)):
            inputs = make_inputs(spec, sizes, 1)
            expected = EagerRunner(module, spec.names).run(inputs)
            produced = runner.run(inputs)
            np.testing.assert_allclose(produced[0], expected[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ZOO_RECIPES, ids=[r.stem for r in ZOO_RECIPES])
def test_zoo_model_verifies_in_openvino_at_every_shape(recipe: Path, tmp_path: Path) -> None:
    """Models whose recipe says OpenVINO cannot keep their control flow must fail verification (exit 1),
    not ship; every other zoo model passes at every shape case."""
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["export", "--recipe", str(recipe), "--to", "openvino", "--out", str(out), "--no-benchmark"]
    )
    expected_to_fail = "openvino" in load_recipe(recipe).not_applicable
    assert result.exit_code == (1 if expected_to_fail else 0), result.output
    report = json.loads((out / "report.json").read_text())
    backend = next(b for b in report["backends"] if b["backend"] == OPENVINO.name)
    shipped = next(
        p for p in report["parity"] if p["backend"] == OPENVINO.name and p["artifact"] == backend["shipped"]
    )
    assert len(shipped["cases"]) >= 3
    assert shipped["passed"] is not expected_to_fail
    assert all(case["passed"] for case in shipped["cases"]) is not expected_to_fail
    assert (out / "model.xml").exists() and (out / "model.bin").exists()


class _Port:
    """A port's names as OpenVINO reports them (the runner reads nothing else of it here)."""

    def __init__(self, names: list[str], any_name: str) -> None:
        self.names, self.any_name = names, any_name

    def get_names(self) -> set[str]:
        return set(self.names)

    def get_any_name(self) -> str:
        return self.any_name


def test_an_input_is_fed_by_its_public_name_not_a_graph_internal_one() -> None:
    from exporter.runners.openvino import input_name

    assert input_name(_Port(["/Concat_output_0", "past_key_values.0.key"], "/Concat_output_0")) == (
        "past_key_values.0.key"
    )
    assert input_name(_Port(["x"], "x")) == "x"
    assert input_name(_Port(["/only_internal"], "/only_internal")) == "/only_internal"
