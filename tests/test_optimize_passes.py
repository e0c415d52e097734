"""The optimize passes' contract: one list, each pass's precondition, postcondition and ``modified`` flag,
checked on small hand-made graphs (no export, no timing)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from exporter.optimize.passes import (
    OPTIMIZE_STEPS,
    PASSES,
    OptimizePass,
    PassConditionError,
    PassResult,
    PassSettings,
    SplitSkipNorm,
    pass_named,
    resolve_steps,
)
from exporter.optimize.results import OptimizeOptions


class _Settings:
    options = OptimizeOptions()
    threads = 1


def _relu(path: Path, *, output: str = "y") -> Path:
    """x (2, 3) -> Relu -> ``output``."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], [output])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [2, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _skip_norm(path: Path, opset: int) -> Path:
    """x, skip (1, 2, 4) -> com.microsoft SkipLayerNormalization -> y, at default-domain ``opset``."""
    weights = [helper.make_tensor(n, TensorProto.FLOAT, [4], [1.0, 1.0, 1.0, 1.0]) for n in ("gamma", "beta")]
    node = helper.make_node(
        "SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"], domain="com.microsoft"
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 4]) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4])],
        weights,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_the_pass_list_is_the_optimize_vocabulary_in_run_order() -> None:
    assert OPTIMIZE_STEPS == ("transformer", "splitnorm", "fp16", "ort")
    assert [p.name for p in PASSES] == list(OPTIMIZE_STEPS)
    assert [p.name for p in PASSES if p.auto] == ["transformer", "splitnorm"]
    assert [p.name for p in PASSES if not p.quantizable] == ["ort"]
    assert all(pass_named(name).name == name for name in OPTIMIZE_STEPS)


def test_named_passes_run_in_list_order_whatever_order_they_are_named_in(tmp_path: Path) -> None:
    model = _relu(tmp_path / "m.onnx")
    named = OptimizeOptions(steps=("ort", "fp16", "splitnorm"))
    assert resolve_steps(named, model) == ["splitnorm", "fp16", "ort"]
    assert resolve_steps(OptimizeOptions(steps=("auto",)), model) == []  # no attention here


def test_splitnorm_requires_opset_17_only_when_there_is_something_to_split(tmp_path: Path) -> None:
    split = pass_named("splitnorm")
    old = _skip_norm(tmp_path / "old.onnx", opset=16)
    with pytest.raises(PassConditionError, match="opset 17"):
        split(old, tmp_path / "out.onnx", _Settings())
    assert not (tmp_path / "out.onnx").exists()  # the precondition stops it before anything is written
    nothing = split(_relu(tmp_path / "relu.onnx"), tmp_path / "same.onnx", _Settings())
    assert nothing == PassResult(tmp_path / "same.onnx", False, {"SkipLayerNormalization_split": 0})
    assert isinstance(split, SplitSkipNorm) and "nothing to split" in split.unmodified


def test_splitnorm_on_opset_17_is_modified_and_keeps_the_interface(tmp_path: Path) -> None:
    result = pass_named("splitnorm")(_skip_norm(tmp_path / "m.onnx", 17), tmp_path / "s.onnx", _Settings())
    assert result.modified and result.counts == {"SkipLayerNormalization_split": 1}
    ops = [n.op_type for n in onnx.load(str(result.model)).graph.node]
    assert ops == ["Sum", "LayerNormalization"]


class _RenamesOutput(OptimizePass):
    """A broken pass: rewrites the graph and renames its output."""

    name = "rename"

    def build(self, source: Path, target: Path, settings: PassSettings) -> PassResult:
        _relu(target, output="z")
        return PassResult(target, True)


def test_a_pass_that_changes_the_model_interface_fails_its_postcondition(tmp_path: Path) -> None:
    source = _relu(tmp_path / "m.onnx")
    with pytest.raises(PassConditionError, match="inputs or outputs changed"):
        _RenamesOutput()(source, tmp_path / "renamed.onnx", _Settings())


def test_fp16_keeps_float32_inputs_and_outputs(tmp_path: Path) -> None:
    result = pass_named("fp16")(_relu(tmp_path / "m.onnx"), tmp_path / "h.onnx", _Settings())
    graph = onnx.load(str(result.model)).graph
    assert result.modified
    assert [v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]] == [TensorProto.FLOAT] * 2
