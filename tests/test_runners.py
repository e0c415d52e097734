"""Runners: mapping named inputs onto forward, naming flattened outputs, eager and ONNX Runtime backends."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from exporter.runners.base import CallConvention
from exporter.runners.onnxruntime import OnnxRuntimeRunner
from exporter.runners.pytorch import EagerRunner, flatten_outputs

# --- tiny models ----------------------------------------------------------------------------------------


class Scale(nn.Module):
    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return x * scale


class WithOptional(nn.Module):
    def forward(self, x: Tensor, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        out = x if mask is None else x * mask
        return out if bias is None else out + bias


class VarArgs(nn.Module):
    def forward(self, *tensors: Tensor) -> Tensor:
        return torch.stack(tensors).sum(0)


class KeywordOnly(nn.Module):
    def forward(self, x: Tensor, *, scale: Tensor) -> Tensor:
        return x * scale


class Nested(nn.Module):
    def forward(self, x: Tensor) -> dict[str, object]:
        return {"a": x + 1, "b": (x * 2, x - 1)}


class Sub(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a - b


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def floats(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- CallConvention -------------------------------------------------------------------------------------


def test_matching_names_map_by_keyword() -> None:
    convention = CallConvention.for_module(Scale(), ["x", "scale"])
    assert convention.by_name
    assert convention.positional == ("x", "scale")
    assert convention.keyword == ()


def test_names_in_another_order_follow_the_signature() -> None:
    convention = CallConvention.for_module(Scale(), ["scale", "x"])
    assert convention.by_name
    args, kwargs = convention.split({"scale": 2, "x": 1})
    assert args == (1, 2)
    assert kwargs == {}


def test_skipped_optional_parameter_passes_the_rest_by_keyword() -> None:
    convention = CallConvention.for_module(WithOptional(), ["x", "bias"])
    assert convention.by_name
    assert convention.positional == ("x",)
    assert convention.keyword == ("bias",)
    args, kwargs = convention.split({"x": 1, "bias": 3})
    assert args == (1,)
    assert kwargs == {"bias": 3}


def test_unknown_names_fall_back_to_positional() -> None:
    convention = CallConvention.for_module(Scale(), ["input", "factor"])
    assert not convention.by_name
    assert convention.positional == ("input", "factor")
    assert convention.keyword == ()
    assert convention.split({"factor": 2, "input": 1}) == ((1, 2), {})


def test_var_positional_forward_is_positional() -> None:
    convention = CallConvention.for_module(VarArgs(), ["a", "b"])
    assert not convention.by_name
    assert convention.positional == ("a", "b")


def test_torchscript_module_maps_by_name() -> None:
    scripted = torch.jit.script(Sub())
    convention = CallConvention.for_module(scripted, ["b", "a"])
    assert convention.by_name
    assert convention.positional == ("a", "b")
    runner = EagerRunner(scripted, ["b", "a"])
    a, b = floats(3, seed=1), floats(3, seed=2)
    (out,) = runner.run({"a": a, "b": b})
    np.testing.assert_allclose(out, a - b)


def test_torchscript_module_with_other_names_is_positional() -> None:
    scripted = torch.jit.script(Sub())
    convention = CallConvention.for_module(scripted, ["first", "second"])
    assert not convention.by_name
    assert convention.positional == ("first", "second")


def test_eager_runner_passes_inputs_to_the_right_parameter() -> None:
    runner = EagerRunner(Sub(), ["b", "a"])
    a, b = floats(4, seed=3), floats(4, seed=4)
    (out,) = runner.run({"a": a, "b": b})
    np.testing.assert_allclose(out, a - b)


def test_eager_runner_with_skipped_optional_parameter() -> None:
    runner = EagerRunner(WithOptional(), ["x", "bias"])
    x, bias = floats(2, 3, seed=5), floats(2, 3, seed=6)
    (out,) = runner.run({"x": x, "bias": bias})
    np.testing.assert_allclose(out, x + bias, rtol=1e-6)


def test_keyword_only_parameters_are_passed_by_keyword() -> None:
    """``forward(self, x, *, scale)`` cannot take ``scale`` positionally."""
    convention = CallConvention.for_module(KeywordOnly(), ["x", "scale"])
    assert convention.positional == ("x",)
    assert convention.keyword == ("scale",)
    x, scale = floats(3, seed=7), floats(3, seed=8)
    (out,) = EagerRunner(KeywordOnly(), ["x", "scale"]).run({"x": x, "scale": scale})
    np.testing.assert_allclose(out, x * scale, rtol=1e-6)


# --- flatten_outputs ------------------------------------------------------------------------------------


def test_single_tensor_is_named_output() -> None:
    t = torch.ones(2)
    flat = flatten_outputs(t)
    assert [n for n, _ in flat] == ["output"]
    assert flat[0][1] is t


def test_nested_dict_and_tuple_names() -> None:
    a, b0, b1 = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    flat = flatten_outputs({"a": a, "b": (b0, b1)})
    assert [n for n, _ in flat] == ["a", "b.0", "b.1"]
    assert [t for _, t in flat] == [a, b0, b1]


def test_tuple_and_list_names_are_indices() -> None:
    flat = flatten_outputs((torch.zeros(1), [torch.ones(1), torch.ones(2)]))
    assert [n for n, _ in flat] == ["0", "1.0", "1.1"]


def test_namedtuple_fields_name_the_leaves() -> None:
    pair = namedtuple("Pair", ["logits", "hidden"])
    flat = flatten_outputs(pair(torch.zeros(1), torch.ones(1)))
    assert [n for n, _ in flat] == ["logits", "hidden"]


def test_non_tensor_leaves_are_dropped() -> None:
    flat = flatten_outputs(
        {"loss": None, "logits": torch.zeros(2), "steps": 3, "extra": (torch.ones(1), "x")}
    )
    assert [n for n, _ in flat] == ["logits", "extra.0"]


# --- EagerRunner / Runner -------------------------------------------------------------------------------


def test_eager_runner_returns_numpy_and_output_names() -> None:
    runner = EagerRunner(Nested(), ["x"])
    assert runner.output_names == []
    x = floats(2, 3)
    outputs = runner.run({"x": x})
    assert runner.output_names == ["a", "b.0", "b.1"]
    assert all(isinstance(o, np.ndarray) for o in outputs)
    np.testing.assert_allclose(outputs[0], x + 1)
    np.testing.assert_allclose(outputs[1], x * 2)
    np.testing.assert_allclose(outputs[2], x - 1)


def test_eager_runner_keeps_dtypes() -> None:
    class Cast(nn.Module):
        def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
            return ids * 2, ids > 1

    ids = np.array([[0, 1, 2]], dtype=np.int64)
    doubled, mask = EagerRunner(Cast(), ["ids"]).run({"ids": ids})
    assert doubled.dtype == np.int64
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(doubled, ids * 2)
    np.testing.assert_array_equal(mask, ids > 1)


def test_eager_runner_accepts_non_contiguous_inputs() -> None:
    x = floats(3, 6)[:, ::2]
    assert not x.flags["C_CONTIGUOUS"]
    (out,) = EagerRunner(Scale(), ["x", "scale"]).run({"x": x, "scale": np.float32(2) * np.ones_like(x)})
    np.testing.assert_allclose(out, x * 2)


def test_eager_runner_accepts_read_only_inputs() -> None:
    """Golden inputs may be read-only (memory-mapped .npy files); running them must not warn or fail."""
    x = floats(2, 6)
    x.flags.writeable = False
    (out,) = EagerRunner(tiny_mlp(), ["x"]).run({"x": x})
    assert out.shape == (2, 3)


def test_eager_runner_does_not_track_gradients() -> None:
    model = tiny_mlp()
    EagerRunner(model, ["x"]).run({"x": floats(2, 6)})
    assert all(p.grad is None for p in model.parameters())


def test_missing_input_raises_key_error() -> None:
    runner = EagerRunner(Scale(), ["x", "scale"])
    with pytest.raises(KeyError, match="scale"):
        runner.run({"x": floats(2)})


def test_extra_inputs_are_ignored() -> None:
    x = floats(2, 6)
    runner = EagerRunner(tiny_mlp(), ["x"])
    (with_extra,) = runner.run({"x": x, "unused": floats(1)})
    (plain,) = runner.run({"x": x})
    np.testing.assert_array_equal(with_extra, plain)


# --- OnnxRuntimeRunner ----------------------------------------------------------------------------------


class Affine(nn.Module):
    """A linear layer minus a shift: two named inputs, real weights, a dynamic batch dim."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 3)

    def forward(self, x: Tensor, shift: Tensor) -> Tensor:
        return self.linear(x) - shift


@pytest.fixture(scope="module")
def affine_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """Export once per module: the first torch.export call of a process takes a few seconds."""
    model = Affine().eval()
    path = tmp_path_factory.mktemp("onnx") / "affine.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model,
        (torch.randn(2, 6), torch.randn(2, 3)),
        path,
        dynamo=True,
        input_names=["x", "shift"],
        dynamic_shapes=({0: batch}, {0: batch}),
        verbose=False,
    )
    return model, path


def test_onnxruntime_matches_eager(affine_onnx: tuple[nn.Module, Path]) -> None:
    model, path = affine_onnx
    runner = OnnxRuntimeRunner(path, threads=1)
    assert runner.input_names == ("x", "shift")
    assert len(runner.output_names) == 1
    eager = EagerRunner(model, ["x", "shift"])
    for batch in (2, 1, 5):
        inputs = {"x": floats(batch, 6, seed=batch), "shift": floats(batch, 3, seed=10 + batch)}
        (actual,) = runner.run(inputs)
        (expected,) = eager.run(inputs)
        assert isinstance(actual, np.ndarray)
        assert actual.shape == (batch, 3)
        assert actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-4)


def test_onnxruntime_takes_inputs_by_name(affine_onnx: tuple[nn.Module, Path]) -> None:
    runner = OnnxRuntimeRunner(affine_onnx[1], threads=2)
    x, shift = floats(3, 6, seed=1), floats(3, 3, seed=2)
    (in_order,) = runner.run({"x": x, "shift": shift})
    (reversed_order,) = runner.run({"shift": shift, "x": x, "unused": floats(1)})
    np.testing.assert_array_equal(in_order, reversed_order)


def test_onnxruntime_missing_input_raises_key_error(affine_onnx: tuple[nn.Module, Path]) -> None:
    runner = OnnxRuntimeRunner(affine_onnx[1], threads=1)
    with pytest.raises(KeyError, match="shift"):
        runner.run({"x": floats(2, 6)})


def test_onnxruntime_bad_input_shape_is_a_one_line_runtime_error(affine_onnx: tuple[nn.Module, Path]) -> None:
    runner = OnnxRuntimeRunner(affine_onnx[1], threads=1)
    with pytest.raises(RuntimeError) as info:
        runner.run({"x": floats(2, 7), "shift": floats(2, 3)})
    message = str(info.value)
    assert "x" in message
    assert "dimensions" in message
    assert "\n" not in message


def test_onnxruntime_node_failure_names_the_node(affine_onnx: tuple[nn.Module, Path]) -> None:
    """Batch sizes that disagree fail inside the graph; the error keeps the node and drops source paths."""
    runner = OnnxRuntimeRunner(affine_onnx[1], threads=1)
    with pytest.raises(RuntimeError) as info:
        runner.run({"x": floats(2, 6), "shift": floats(4, 3)})
    message = str(info.value)
    assert message.startswith("Sub node '")
    assert "broadcast" in message
    assert "\n" not in message
    assert "onnxruntime_src" not in message
