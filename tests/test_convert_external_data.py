"""External data in the convert stage: with ``--external-data`` (or past 2 GB) every ONNX model keeps its
weights in exactly one ``<file>.data`` beside it, for both exporters and for the simplified candidate, and the
``onnx_files`` helpers keep that shape when they consolidate, move and copy models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.convert import onnx as onnx_conversion
from exporter.convert.onnx import OnnxConversionRequest, OnnxExporterChoice, convert_to_onnx
from exporter.convert.onnx_files import (
    consolidate_external_data,
    external_locations,
    externalize,
    internalize,
    move_onnx_model,
    read_structure,
    remove_onnx_model,
    save_graph_only,
    uses_external_data,
)
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.conftest import export_tiny_mlp
from tests.models import MODELS


def _matmul_model(count: int = 3) -> onnx.ModelProto:
    """x @ w0 @ w1 ...: ``count`` 64x64 weights of 16 KB each (past onnx's 1 KB external threshold)."""
    weights = [
        numpy_helper.from_array(np.full((64, 64), i + 1, dtype=np.float32) / 64, f"w{i}")
        for i in range(count)
    ]
    names = ["x", *(f"h{i}" for i in range(count - 1)), "y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(count)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _expected(x: np.ndarray, count: int = 3) -> np.ndarray:
    for i in range(count):
        x = x @ (np.full((64, 64), i + 1, dtype=np.float32) / 64)
    return x


def _loose(folder: Path) -> Path:
    """A model saved the way the TorchScript-based exporter saves one past 2 GB: a file per tensor."""
    path = folder / "model.onnx"
    onnx.save_model(_matmul_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=False)
    return path


def test_consolidate_gathers_loose_files_into_one(tmp_path: Path) -> None:
    path = _loose(tmp_path)
    assert len(external_locations(path)) == 3
    consolidate_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert external_locations(path) == {"model.onnx.data"}
    x = np.ones((2, 64), dtype=np.float32)
    np.testing.assert_allclose(_run(path, x), _expected(x), rtol=1e-6)
    onnx.checker.check_model(str(path), full_check=True)


def test_move_renames_the_data_file_after_the_target(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "ship").mkdir()
    source = tmp_path / "build" / "model.simplified.onnx"
    onnx.save_model(_matmul_model(), str(source), save_as_external_data=True, location="weights.bin")
    target = tmp_path / "ship" / "model.onnx"
    move_onnx_model(source, target)
    assert list((tmp_path / "build").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "ship").iterdir()) == ["model.onnx", "model.onnx.data"]
    x = np.ones((1, 64), dtype=np.float32)
    np.testing.assert_allclose(_run(target, x), _expected(x), rtol=1e-6)


def test_move_of_loose_files_leaves_one_data_file(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "ship").mkdir()
    target = tmp_path / "ship" / "model.onnx"
    move_onnx_model(_loose(tmp_path / "build"), target)
    assert list((tmp_path / "build").iterdir()) == []
    assert external_locations(target) == {"model.onnx.data"}


def test_graph_only_copy_passes_the_checker_and_keeps_the_source(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    externalize_me = _matmul_model()
    onnx.save_model(externalize_me, str(source))
    externalize(source)
    graph = read_structure(source)
    rewritten = onnx.load(str(source), load_external_data=False)
    rewritten.graph.node[0].name = "renamed"  # a node-only rewrite
    target = tmp_path / "model.ort.onnx"
    save_graph_only(rewritten, source, target)
    onnx.checker.check_model(str(target), full_check=True)
    assert external_locations(target) == {"model.ort.onnx.data"}
    assert (tmp_path / "model.onnx.data").stat().st_nlink == 1  # a copy, not a link
    assert read_structure(target).graph.node[0].name == "renamed" != graph.graph.node[0].name
    x = np.ones((1, 64), dtype=np.float32)
    np.testing.assert_allclose(_run(target, x), _run(source, x))


def test_externalize_moves_an_inline_model_out_once(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(_matmul_model(), str(path))
    assert not uses_external_data(path)
    externalize(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert path.stat().st_size < 4096  # the weights (48 KB) left the .onnx file
    externalize(path)  # already in shape: unchanged
    assert external_locations(path) == {"model.onnx.data"}
    remove_onnx_model(path)
    assert list(tmp_path.iterdir()) == []


def test_read_structure_is_the_model_without_tensor_values(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    model = _matmul_model()
    onnx.save_model(model, str(path))
    structure = read_structure(path)
    assert [n.op_type for n in structure.graph.node] == ["MatMul"] * 3
    assert [(t.name, list(t.dims)) for t in structure.graph.initializer] == [
        (f"w{i}", [64, 64]) for i in range(3)
    ]
    assert all(not t.raw_data and not t.float_data for t in structure.graph.initializer)
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
    assert structure.SerializeToString() == model.SerializeToString()


def _request(tmp_path: Path, exporter: OnnxExporterChoice, simplify: bool = True) -> OnnxConversionRequest:
    entry = MODELS["mlp"]
    spec = InputSpec(tuple(parse_tensor_spec(s) for s in entry.inputs))
    module = entry.build().eval()
    sizes = dict.fromkeys(spec.example_sizes, 2)
    x = torch.randn(*(sizes.get(d.label, d.size) for d in spec.tensors[0].dims))
    return OnnxConversionRequest(
        module=module,
        spec=spec,
        example_inputs={spec.names[0]: x},
        probe_inputs=None,
        output_names=["output"],
        work_dir=tmp_path / "build",
        exporter=exporter,
        simplify=simplify,
        external_data=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("exporter", [OnnxExporterChoice.DYNAMO, OnnxExporterChoice.TORCHSCRIPT])
def test_forced_external_data_for_both_exporters_and_the_simplified_model(
    tmp_path: Path, exporter: OnnxExporterChoice
) -> None:
    request = _request(tmp_path, exporter)
    result = convert_to_onnx(request)
    assert result.exporter == exporter.value and result.external_data
    assert result.shape_inference_error is None and result.simplify_error is None
    assert result.simplified_path is not None
    assert sorted(p.name for p in request.work_dir.iterdir()) == [
        "model.onnx",
        "model.onnx.data",
        "model.simplified.onnx",
        "model.simplified.onnx.data",
    ]
    for path in (result.model_path, result.simplified_path):
        assert external_locations(path) == {f"{path.name}.data"}
        onnx.checker.check_model(str(path), full_check=True)
    x = request.example_inputs[request.spec.names[0]]
    with torch.inference_mode():
        expected = request.module(x).numpy()
    for path in (result.model_path, result.simplified_path):
        np.testing.assert_allclose(_run(path, x.numpy()), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_external_data_export_ships_one_data_file(tmp_path: Path, exporter: str) -> None:
    out = export_tiny_mlp(
        tmp_path, external_data=True, optimization={"steps": ("none",)}, onnx_exporter=exporter
    )
    names = sorted(p.name for p in out.iterdir())
    onnx_files = [n for n in names if n.startswith("model")]
    assert onnx_files == ["model.onnx", "model.onnx.data"], names
    assert external_locations(out / "model.onnx") == {"model.onnx.data"}
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["onnx"]["candidate"] == "simplified"  # the simplified candidate, external too, shipped


@pytest.mark.slow
def test_default_export_stays_self_contained(tmp_path: Path) -> None:
    out = export_tiny_mlp(tmp_path, optimization={"steps": ("none",)})
    assert not uses_external_data(out / "model.onnx")
    assert not (out / "model.onnx.data").exists()


def test_internalize_streams_the_weights_back_and_deletes_the_data_file(tmp_path: Path) -> None:
    path = _loose(tmp_path)  # three data files: all come back
    x = np.ones((2, 64), dtype=np.float32)
    assert internalize(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    np.testing.assert_allclose(_run(path, x), _expected(x), rtol=1e-6)
    externalize(path)
    onnx.checker.check_model(str(path), full_check=True)
    assert external_locations(path) == {"model.onnx.data"}
    np.testing.assert_allclose(_run(path, x), _expected(x), rtol=1e-6)


@pytest.mark.slow
def test_default_conversion_is_self_contained_and_big_models_skip_onnxsim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = replace(_request(tmp_path, OnnxExporterChoice.DYNAMO), external_data=False)
    monkeypatch.setattr(onnx_conversion, "SIMPLIFY_LIMIT", 1024)  # the tiny model counts as big
    result = convert_to_onnx(request)
    assert not result.external_data and result.simplified_path is None
    assert result.simplify_error is not None and result.simplify_error.startswith("skipped: the model is")
    assert sorted(p.name for p in request.work_dir.iterdir()) == ["model.onnx"]
    onnx.checker.check_model(str(result.model_path), full_check=True)


@pytest.mark.slow
def test_a_model_verified_with_external_data_is_settled_inline_afterwards(tmp_path: Path) -> None:
    base = _request(tmp_path, OnnxExporterChoice.DYNAMO, simplify=False)
    request = replace(base, external_data=False, inline_after_verify=True)
    result = convert_to_onnx(request)
    assert result.inline_pending and external_locations(result.model_path) == {"model.onnx.data"}
    result.settle()
    assert not result.external_data and not result.inline_pending
    assert sorted(p.name for p in request.work_dir.iterdir()) == ["model.onnx"]
    onnx.checker.check_model(str(result.model_path), full_check=True)
