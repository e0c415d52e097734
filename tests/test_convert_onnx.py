"""ONNX conversion on its own: recorded strategies, checker-clean output, external data kept together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.convert.onnx import (
    OnnxConversionRequest,
    OnnxExporterChoice,
    convert_to_onnx,
    move_onnx_model,
)
from exporter.errors import ConversionError
from exporter.specs.inputs import InputSpec, make_inputs, parse_tensor_spec
from tests.models import MODELS


def _request(name: str, tmp_path: Path, **overrides: object) -> OnnxConversionRequest:
    model = MODELS[name]
    spec = InputSpec(tuple(parse_tensor_spec(s) for s in model.inputs))
    module = model.build()

    def tensors(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in make_inputs(spec, sizes, 0).items()}

    example = tensors(spec.example_sizes)
    probe = tensors({label: size + 2 for label, size in spec.example_sizes.items()})
    settings: dict[str, object] = {
        "module": module,
        "spec": spec,
        "example_inputs": example,
        "probe_inputs": probe,
        "output_names": ["output"],
        "work_dir": tmp_path / "build",
    }
    settings.update(overrides)
    return OnnxConversionRequest(**settings)  # type: ignore[arg-type]


def test_dynamo_export_is_checked_simplified_and_dynamic(tmp_path: Path) -> None:
    result = convert_to_onnx(_request("conv", tmp_path, opset=18))
    assert [a.exporter for a in result.attempts] == ["dynamo"]
    assert result.opset == 18 and not result.external_data
    onnx.checker.check_model(str(result.model_path), full_check=True)
    assert result.simplified_path is not None and result.simplified_path.exists()
    graph_input = onnx.load(str(result.model_path)).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_torchscript_exporter_marks_moving_output_axes_dynamic(tmp_path: Path) -> None:
    result = convert_to_onnx(_request("mlp", tmp_path, exporter=OnnxExporterChoice.TORCHSCRIPT))
    assert result.exporter == "torchscript"
    output = onnx.load(str(result.model_path)).graph.output[0]
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert dims == ["output_dim0", 4]


def test_failed_strategy_is_recorded_with_the_line_of_model_code(tmp_path: Path) -> None:
    result = convert_to_onnx(_request("gate", tmp_path))
    failed = result.attempts[0]
    assert failed.exporter == "dynamo" and not failed.succeeded
    assert "models.py" in (failed.error or "") and "x.abs().sum()" in (failed.error or "")
    assert result.attempts[1].succeeded


def test_no_exporter_succeeds(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as caught:
        convert_to_onnx(_request("opaque", tmp_path))
    message = str(caught.value)
    assert "dynamo exporter" in message and "torchscript exporter" in message
    assert "\n" not in message


def test_move_keeps_external_data_beside_the_model(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    source = tmp_path / "build" / "model.onnx"
    source.parent.mkdir()
    onnx.save_model(
        helper.make_model(graph),
        str(source),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    target = tmp_path / "ship" / "model.onnx"
    target.parent.mkdir()
    move_onnx_model(source, target)
    # The data file travels with the model and is renamed after it (one <file>.data per model).
    assert sorted(p.name for p in (tmp_path / "ship").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert not (tmp_path / "build" / "weights.bin").exists()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = np.ones((1, 64), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ numpy_helper.to_array(weight))
