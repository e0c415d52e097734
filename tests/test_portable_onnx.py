"""model.onnx holds only standard ONNX ops and runs in a second runtime (OpenVINO); ONNX Runtime's own
rewrites ship apart, as model.ort.onnx, verified, listed and timed as an artifact of their own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from exporter.errors import ExitCode
from exporter.optimize.optimizer import OptimizeOptions, nonstandard_domains
from exporter.options import build_export_options
from exporter.pipeline import ExportOptions, export
from exporter.quantize.types import QuantizeOptions, QuantMode
from tests.conftest import FAST_TIMING

ROOT = Path(__file__).resolve().parents[1]


def _export_recipe(recipe: str, out: Path) -> Path:
    options = build_export_options(
        ROOT / "recipes" / recipe,
        {"out": out, "targets": ("onnx",), "timing": FAST_TIMING, "benchmark": False},
    )
    result = export(options)
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    return result.out_dir


def _read(folder: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((folder / name).read_text())
    return loaded


def _assert_runs_in_openvino(folder: Path) -> int:
    """Every golden case through OpenVINO's CPU plugin at float32, within the manifest's tolerance; returns
    how many cases ran."""
    import openvino

    manifest = _read(folder, "manifest.json")
    tolerance = manifest["tolerance"]
    compiled = openvino.Core().compile_model(
        str(folder / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    cases = [g for g in manifest["golden"] if "outputs" in g]
    for case in cases:
        with np.load(folder / case["inputs"]) as stored:
            inputs = {name: stored[name] for name in stored.files}
        with np.load(folder / case["outputs"]) as stored:
            expected = {name: stored[name] for name in stored.files}
        produced = compiled(inputs)
        for name in case["output_names"]:
            np.testing.assert_allclose(
                produced[compiled.output(name)],
                expected[name],
                rtol=float(tolerance["rtol"]),
                atol=float(tolerance["atol"]),
                err_msg=f"OpenVINO, case {case['case']}, output {name}",
            )
    return len(cases)


def _assert_portable_folder(folder: Path) -> None:
    """model.onnx is standard and runs in OpenVINO; a model.ort.onnx beside it is listed and needs ORT."""
    assert nonstandard_domains(folder / "model.onnx") == set()
    assert _assert_runs_in_openvino(folder) >= 3
    summary = _read(folder, "report.json")["optimization_summary"]
    assert summary["domains"][summary["portable"]] == []
    specific = folder / "model.ort.onnx"
    if not specific.exists():
        assert summary["runtime_specific"] is None
        return
    manifest, report = _read(folder, "manifest.json"), _read(folder, "report.json")
    assert {"backend": "onnxruntime-optimized", "file": "model.ort.onnx"}.items() <= next(
        a for a in manifest["artifacts"] if a["file"] == "model.ort.onnx"
    ).items()
    assert "onnxruntime-optimized" in [b["backend"] for b in report["backends"]]
    assert nonstandard_domains(specific), "a model.ort.onnx with only standard ops should not exist"


def test_nonstandard_domains_sees_nodes_in_the_graph_its_subgraphs_and_functions(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    branch = helper.make_graph(
        [helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")], "then", [], [y]
    )
    standard = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("Identity", ["y"], ["z"], domain="ai.onnx"),
        ],
        "g",
        [x],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "standard.onnx"
    onnx.save(helper.make_model(standard), str(path))
    assert nonstandard_domains(path) == set()

    condition = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    branched = helper.make_graph(
        [
            helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
            helper.make_node("Scale", ["y"], ["z"], domain="local.functions"),
        ],
        "g",
        [x, condition],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    function = helper.make_function(
        "local.functions",
        "Scale",
        ["a"],
        ["b"],
        [helper.make_node("Scaler", ["a"], ["b"], domain="vendor.ops")],
        [helper.make_opsetid("vendor.ops", 1)],
    )
    path = tmp_path / "contrib.onnx"
    onnx.save(helper.make_model(branched, functions=[function]), str(path))
    assert nonstandard_domains(path) == {"com.microsoft", "local.functions", "vendor.ops"}


def test_the_digits_cnn_model_onnx_is_standard_and_runs_in_openvino(tmp_path: Path) -> None:
    _assert_portable_folder(_export_recipe("digits_cnn.toml", tmp_path / "digits"))


@pytest.mark.slow
def test_the_tiny_encoder_model_onnx_is_standard_and_runs_in_openvino(tmp_path: Path) -> None:
    _assert_portable_folder(_export_recipe("tiny_encoder.toml", tmp_path / "encoder"))


ORT_STEP = OptimizeOptions(steps=("ort",))  # auto leaves ORT's offline rewrites out; named, it runs


def _ort_step_timed_as(p50: float) -> Callable[..., list[dict[str, float]]]:
    """A stand-in for the optimize stage's timing: the ``+ort`` variant at ``p50``, every other at 1 ms, so
    the test decides which variant is faster rather than the machine's noise."""

    def time_paths(paths: list[Path], request: object) -> list[dict[str, float]]:
        return [{"batch=1": p50 if path.stem.endswith("+ort") else 1.0} for path in paths]

    return time_paths


def test_a_faster_ort_rewrite_ships_as_model_ort_onnx_listed_timed_and_gated(
    options_for: Callable[..., ExportOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.gate.reverify import VerifyRequest, verify_artifacts
    from exporter.optimize import optimizer as optimize

    monkeypatch.setattr(optimize, "_time_paths", _ort_step_timed_as(0.5))
    # as for a graph with rewrites ORT does not make at load (transformer fusions): the plumbing is the same
    monkeypatch.setattr(optimize, "only_load_time_rewrites", lambda portable, fastest: False)
    quantization = QuantizeOptions(mode=QuantMode.DYNAMIC, samples=16)
    result = export(options_for("mlp", quantization=quantization, optimization=ORT_STEP))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    folder = result.out_dir
    assert [b.backend for b in result.backends] == ["onnxruntime", "onnxruntime-optimized"]
    assert result.backend("onnxruntime").shipped == "simplified"
    assert result.backend("onnxruntime-optimized").shipped == "simplified+ort"
    assert nonstandard_domains(folder / "model.onnx") == set()
    assert nonstandard_domains(folder / "model.ort.onnx") == {"com.microsoft"}
    summary = result.report["optimization_summary"]
    assert summary["portable"] == "simplified" and summary["runtime_specific"] == "simplified+ort"
    assert summary["runtime_specific_p50_ratio"] == pytest.approx(0.5)
    assert "+ort" not in summary["quantization_source"]  # int8 still starts before ORT's fused kernels
    stage = next(s for s in result.stages if s.name == "optimize")
    assert "model.onnx: simplified" in stage.detail
    assert "model.ort.onnx: simplified+ort (p50 x0.50 of model.onnx)" in stage.detail
    manifest = _read(folder, "manifest.json")
    entry = next(a for a in manifest["artifacts"] if a["backend"] == "onnxruntime-optimized")
    assert entry["file"] == "model.ort.onnx" and entry["verified"] and "model.ort.onnx" in manifest["files"]
    report = _read(folder, "report.json")
    assert report["artifacts"]["onnxruntime-optimized"] == "model.ort.onnx"
    assert any("model.ort.onnx holds ONNX Runtime-specific rewrites (ort)" in n for n in report["notes"])
    timed = {(s["backend"], s["label"]) for s in report["latency"]}
    assert {("onnxruntime-optimized", "batch=1"), ("onnxruntime-optimized", "batch=2")} <= timed
    gate = verify_artifacts(VerifyRequest(folder, threads=1))
    assert gate.exit_code is ExitCode.OK, [c.detail for c in gate.checks if not c.passed]
    check = next(c for c in gate.checks if c.name == "parity onnxruntime-optimized")
    assert check.passed and "model.ort.onnx" in check.detail


def test_an_ort_rewrite_no_faster_than_the_portable_model_does_not_ship(
    options_for: Callable[..., ExportOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.optimize import optimizer as optimize

    monkeypatch.setattr(optimize, "_time_paths", _ort_step_timed_as(0.99))
    monkeypatch.setattr(optimize, "only_load_time_rewrites", lambda portable, fastest: False)
    result = export(options_for("mlp", benchmark=False, optimization=ORT_STEP))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    assert [b.backend for b in result.backends] == ["onnxruntime"]
    assert not (result.out_dir / "model.ort.onnx").exists()
    summary = result.report["optimization_summary"]
    assert summary["fastest"] == "simplified+ort" and summary["runtime_specific"] is None
    record = next(r for r in result.report["optimization"] if r["name"] == "runtime-specific")
    assert not record["kept"] and record["reason"].startswith("not faster: p50 x0.99")
    stage = next(s for s in result.stages if s.name == "optimize")
    assert "model.ort.onnx" not in stage.detail and "runtime-specific" not in stage.detail


def test_ort_load_time_rewrites_alone_never_ship_however_they_time(
    options_for: Callable[..., ExportOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    """model.onnx + the ``ort`` step is what a session makes of model.onnx at load: a faster timing of it is
    noise, so it does not ship and the record says why."""
    from exporter.optimize import optimizer as optimize

    monkeypatch.setattr(optimize, "_time_paths", _ort_step_timed_as(0.5))
    result = export(options_for("mlp", benchmark=False, optimization=ORT_STEP))
    assert [b.backend for b in result.backends] == ["onnxruntime"]
    record = next(r for r in result.report["optimization"] if r["name"] == "runtime-specific")
    assert not record["kept"] and "load-time rewrites" in record["reason"]
