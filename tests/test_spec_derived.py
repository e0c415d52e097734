"""Derived dims in input specs (issue 27): ``attention_mask:int64:batch=1..4,total=past+seq`` says the mask's
length is always past + seq, so every shape the verifier draws is one a decoder can take; and a range may
start at 0 (``past=0..64``: the first call has an empty past)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from exporter.convert._dynamic_shapes import dynamic_shapes_for
from exporter.convert.onnx import OnnxConversionRequest, OnnxExporterChoice, convert_to_onnx
from exporter.documents.manifest import InputSpecEntry
from exporter.errors import ExitCode, InputSpecError
from exporter.pipeline import ExportOptions, export
from exporter.runners.base import CallConvention
from exporter.specs.inputs import (
    DimSpec,
    DynamicDim,
    InputSpec,
    TensorSpec,
    make_inputs,
    parse_tensor_spec,
    shape_cases,
    trace_sizes,
)
from tests.conftest import FAST_TIMING

IDS = "x:int64:batch=1..4,seq=1..16:0..50"
MASK = "mask:int64:batch=1..4,total=past+seq:0..2"
PAST = "past:float32:batch=1..4,past=0..16"


def _spec(*texts: str, dims: tuple[DynamicDim, ...] = ()) -> InputSpec:
    return InputSpec(tuple(parse_tensor_spec(t) for t in texts), dims)


class DecoderStep(torch.nn.Module):
    """A decoder step's shapes: new tokens ``x`` [batch, seq], a mask over past and new [batch, past + seq]
    and a past [batch, past]; it attends (mean-pools) over the concatenation, so the mask must be as long."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        keys = torch.cat([past.unsqueeze(-1).expand(-1, -1, 8), self.embed(x)], dim=1)
        weights = mask.unsqueeze(-1).to(keys.dtype)
        return self.mix((keys * weights).sum(1) / weights.sum(1).clamp(min=1.0))  # type: ignore[no-any-return]


def make_decoder_step() -> DecoderStep:
    return DecoderStep().eval()


# --- syntax ------------------------------------------------------------------------------------------------


def test_a_derived_dim_parses_and_round_trips() -> None:
    tensor = parse_tensor_spec("attention_mask:int64:batch=1..4, total = past + seq :0..2")
    _batch, total = tensor.dims
    assert (total.label, total.parts, total.range, total.dynamic) == ("total", ("past", "seq"), None, True)
    assert str(tensor) == "attention_mask:int64:batch=1..4,total=past+seq:0..2"
    assert parse_tensor_spec(str(tensor)) == tensor
    assert str(DimSpec(0, "t", parts=("a", "b", "c"))) == "t=a+b+c"
    assert tensor.shape({"batch": 2, "past": 3, "seq": 5}) == (2, 8)
    assert tensor.shape({"batch": 2, "past": 3, "seq": 5, "total": 99}) == (2, 8)  # always the sum


@pytest.mark.parametrize(
    ("dims", "part"),
    [
        ("total=past+seq..4", "takes no range or %N of its own"),
        ("total=past+seq%2", "takes no range or %N of its own"),
        ("total=past+1", "'1' is not a dim label"),
        ("total=past+", "'' is not a dim label"),
        ("total=total+seq", "includes itself"),
        ("total=past+past", "names a dim twice"),
        ("total=past", "a derived dim sums two or more labels (as in total=past+seq)"),
    ],
)
def test_a_bad_derived_dim_is_refused_on_one_line(dims: str, part: str) -> None:
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec(f"mask:int64:batch=2,{dims}")
    message = str(info.value)
    assert part in message and "\n" not in message and message.startswith("bad input spec 'mask:int64:")


def test_a_range_may_start_at_zero_and_its_example_is_zero() -> None:
    spec = _spec("past:float32:batch=2,past=0..64,4")
    assert spec.example_sizes == {"batch": 2, "past": 0} and spec.dim("past") == DynamicDim("past", 0, 64)
    assert str(spec.tensors[0]) == "past:float32:batch=2,past=0..64,4"
    with pytest.raises(InputSpecError, match="outside its range"):
        _spec("x:float32:n=0")  # a bare size of 0 still needs a range that holds it


# --- the spec ----------------------------------------------------------------------------------------------


def test_the_spec_keeps_derived_dims_apart_from_its_free_dims() -> None:
    spec = _spec(IDS, MASK, PAST)
    assert spec.example_sizes == {"batch": 1, "seq": 1, "past": 0}
    assert [d.label for d in spec.dynamic_dims] == ["batch", "seq", "past"]
    assert spec.derived_dims == {"total": ("past", "seq")}
    assert spec.dim("total") == DynamicDim("total", 1, 32)
    assert _spec("a:int8:a=1..4", "b:int8:b=2", "m:int8:t=a+b").dim("t") == DynamicDim("t", 2, None)
    assert spec.derived_conflict({"past": 3, "seq": 5, "total": 8}) is None
    assert (
        spec.derived_conflict({"past": 3, "seq": 5, "total": 7})
        == "dim 'total' is 7 but past + seq is 3 + 5 = 8"
    )
    assert spec.derived_conflict({"past": 3, "total": 7}) is None  # seq unknown: nothing to say


@pytest.mark.parametrize(
    ("texts", "dims", "part"),
    [
        (
            (IDS, MASK),
            (),
            "input 'mask': derived dim 'total=past+seq' sums 'past', which no input defines: add",
        ),
        ((IDS, MASK, PAST, "y:int64:batch=1..4,total=3"), (), "is also a dim of its own in input 'y': write"),
        ((IDS, PAST, "y:int64:total=4", MASK), (), "is also a dim of its own in input 'y'"),
        ((IDS, MASK, PAST, "m2:int64:total=seq+past"), (), "is past+seq in input 'mask': write the same sum"),
        (
            (IDS, PAST, "m:int8:total=past+seq", "n:int8:all=total+seq"),
            (),
            "sums 'total', which is itself derived",
        ),
        (
            (IDS, MASK, PAST),
            (DynamicDim("total", 1, 8),),
            "remove total there and give past, seq their ranges",
        ),
    ],
)
def test_a_derived_dim_the_spec_cannot_honour_is_refused(
    texts: tuple[str, ...], dims: tuple[DynamicDim, ...], part: str
) -> None:
    with pytest.raises(InputSpecError) as info:
        _spec(*texts, dims=dims)
    assert part in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("dim", "part"),
    [
        (DimSpec(0, "total", 1, 8, parts=("past", "seq")), "has a size, range or %N of its own"),
        (DimSpec(0, "total", multiple_of=2, parts=("past", "seq")), "has a size, range or %N of its own"),
        (DimSpec(0, "total", parts=("past",)), "must sum two or more other dims"),
        (DimSpec(0, "total", parts=("total", "seq")), "must sum two or more other dims"),
    ],
)
def test_a_derived_dim_built_in_code_is_checked_too(dim: DimSpec, part: str) -> None:
    tensors = (*(parse_tensor_spec(t) for t in (IDS, PAST)), TensorSpec("mask", "int64", (dim,)))
    with pytest.raises(InputSpecError, match="input 'mask': derived dim") as info:
        InputSpec(tensors)
    assert part in str(info.value)


def test_the_size_check_counts_a_derived_dim_at_its_parts_largest() -> None:
    """Each part fits, the sum does not: refused at the verification case 'max'."""
    with pytest.raises(InputSpecError) as info:
        _spec("a:int8:a=1..1500000000", "b:int8:b=1..1500000000", "m:int8:t=a+b")
    message = str(info.value)
    assert message.startswith("input 'm': shape [3000000000] at verification case 'max'"), message


# --- shape cases and drawn inputs ---------------------------------------------------------------------------


def test_every_shape_case_draws_a_mask_as_long_as_past_plus_seq() -> None:
    spec = _spec(IDS, MASK, PAST)
    cases = shape_cases(spec)
    sizes = [case.sizes for case in cases]
    assert all(set(s) == {"batch", "seq", "past"} for s in sizes)
    assert len({tuple(sorted(s.items())) for s in sizes[1:]}) == len(sizes) - 1  # only 'values' repeats
    assert {s["past"] == 0 for s in sizes} == {True, False}
    assert {s["past"] for s in sizes} >= {0, 1, 16}
    for case in cases:
        arrays = make_inputs(spec, case.sizes, 0)
        assert all(spec.dim(label).allows(size) for label, size in case.sizes.items())
        assert arrays["mask"].shape == (case.sizes["batch"], case.sizes["past"] + case.sizes["seq"])
        assert arrays["past"].shape == (case.sizes["batch"], case.sizes["past"])
        assert arrays["x"].shape == (case.sizes["batch"], case.sizes["seq"])
        assert spec.dim("total").allows(arrays["mask"].shape[1])
    assert trace_sizes(spec) == {"batch": 2, "seq": 2, "past": 2}


def test_empty_inputs_draw_in_every_dtype() -> None:
    spec = _spec("b:bool:n=0..4,2", "i:int64:n=0..4", "f:float16:n=0..4,3:0..1", "g:float32:2,n=0..4")
    arrays = make_inputs(spec, spec.example_sizes, 0)
    shapes = {name: (a.shape, a.dtype.name) for name, a in arrays.items()}
    assert shapes == {
        "b": ((0, 2), "bool"),
        "i": ((0,), "int64"),
        "f": ((0, 3), "float16"),
        "g": ((2, 0), "float32"),
    }


def test_to_json_records_the_derived_dims_and_keeps_the_label_in_shapes() -> None:
    document = _spec(IDS, MASK, PAST).to_json()
    assert document["derived_dims"] == {"total": ["past", "seq"]}
    inputs = {entry["name"]: entry for entry in document["inputs"]}  # type: ignore[attr-defined]
    assert inputs["mask"]["shape"] == ["batch", "total"] and inputs["mask"]["example_shape"] == [1, 1]
    assert inputs["past"]["example_shape"] == [1, 0]
    assert set(document["dynamic_dims"]) == {"batch", "seq", "past"}  # type: ignore[arg-type]
    assert "derived_dims" not in _spec(IDS).to_json()  # older readers see no change without one
    json.dumps(document)


# --- export ------------------------------------------------------------------------------------------------


def test_torch_export_gives_the_derived_dim_its_own_dim_and_finds_the_sum() -> None:
    spec = _spec(IDS, MASK, PAST)
    module = make_decoder_step()
    convention = CallConvention.for_module(module, spec.names)
    shapes = dynamic_shapes_for(spec, convention)
    total = shapes[1][1] if isinstance(shapes, tuple) else shapes["mask"][1]
    assert (total.__name__, total.min, total.max) == ("total", 1, 32)
    example = {n: torch.from_numpy(a) for n, a in make_inputs(spec, trace_sizes(spec), 0).items()}
    program = torch.export.export(module, *convention.split(example), dynamic_shapes=shapes)
    node = next(n for n in program.graph.nodes if n.name == "mask")
    assert "+" in str(node.meta["val"].shape[1])  # torch.export proved total == past + seq


@pytest.mark.parametrize("exporter", [OnnxExporterChoice.DYNAMO, OnnxExporterChoice.TORCHSCRIPT])
def test_both_onnx_exporters_name_the_axis_total_and_match_eager_at_every_case(
    exporter: OnnxExporterChoice, tmp_path: Path
) -> None:
    spec = _spec(IDS, MASK, PAST)
    module = make_decoder_step()

    def tensors(sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in make_inputs(spec, sizes, seed).items()}

    request = OnnxConversionRequest(
        module=module,
        spec=spec,
        example_inputs=tensors(trace_sizes(spec), 0),
        probe_inputs=tensors({"batch": 3, "seq": 5, "past": 4}, 0),
        output_names=["pooled"],
        work_dir=tmp_path / "build",
        exporter=exporter,
    )
    result = convert_to_onnx(request)
    assert result.exporter == exporter.value
    graph = onnx.load(str(result.model_path)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"x": ["batch", "seq"], "mask": ["batch", "total"], "past": ["batch", "past"]}
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    for case in shape_cases(spec):
        inputs = make_inputs(spec, case.sizes, 1)
        [got] = session.run(None, inputs)
        with torch.no_grad():
            want = module(*(torch.from_numpy(inputs[n]) for n in spec.names)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=case.name)


@pytest.mark.skipif(
    "derived_dims" not in InputSpecEntry.model_fields,
    reason="the manifest's input_spec has no derived_dims yet (/tmp/issue27/requests-S.md, request 1)",
)
def test_pipeline_exports_and_verifies_a_derived_dim(tmp_path: Path) -> None:
    checkpoint = tmp_path / "step.pt"
    torch.save(make_decoder_step().state_dict(), checkpoint)
    options = ExportOptions.from_settings(
        {
            "checkpoint": checkpoint,
            "model_ref": f"{Path(__file__).resolve()}:make_decoder_step",
            "spec": _spec(IDS, MASK, PAST),
            "out": tmp_path / "artifacts",
            "timing": FAST_TIMING,
            "benchmark": False,
            "batch_sizes": (1,),
        }
    )
    result = export(options)
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert manifest["input_spec"]["derived_dims"] == {"total": ["past", "seq"]}
    outcome = CliRunner().invoke(app, ["verify", str(result.out_dir)])
    assert outcome.exit_code == 0, outcome.output
    assert "past-large" in outcome.output and "max" in outcome.output
