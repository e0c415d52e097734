"""Input specs: parsing ``NAME:DTYPE:DIMS[:LOW..HIGH]``, InputSpec validation, shape cases, example data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import exporter.specs.inputs as specs_module
from exporter.cli import app
from exporter.errors import InputSpecError
from exporter.specs.inputs import (
    MAX_ELEMENTS,
    DimSpec,
    DynamicDim,
    InputSpec,
    TensorSpec,
    make_inputs,
    parse_tensor_spec,
    shape_cases,
)


def spec_of(*texts: str, dims: tuple[DynamicDim, ...] = ()) -> InputSpec:
    return InputSpec(tuple(parse_tensor_spec(t) for t in texts), dims)


def parse_and_draw(text: str) -> dict[str, np.ndarray]:
    spec = InputSpec((parse_tensor_spec(text),))
    return make_inputs(spec, spec.example_sizes, seed=0)


# --- parse_tensor_spec: good specs ---------------------------------------------------------------------


def test_parse_image_spec() -> None:
    spec = parse_tensor_spec("image:float32:batch=1,3,224,224")
    assert spec.name == "image"
    assert spec.dtype == "float32"
    assert spec.dims == (DimSpec(1, "batch"), DimSpec(3), DimSpec(224), DimSpec(224))
    assert spec.dims[0].dynamic
    assert not spec.dims[1].dynamic
    assert spec.low is None
    assert spec.high is None
    assert spec.numpy_dtype == np.dtype(np.float32)
    assert spec.is_float


def test_parse_int_spec_with_range() -> None:
    spec = parse_tensor_spec("input_ids:int64:batch=2,seq=128:0..30522")
    assert spec.name == "input_ids"
    assert spec.dtype == "int64"
    assert spec.dims == (DimSpec(2, "batch"), DimSpec(128, "seq"))
    assert (spec.low, spec.high) == (0, 30522)
    assert not spec.is_float
    assert spec.shape({"batch": 5, "seq": 7}) == (5, 7)


@pytest.mark.parametrize(
    ("alias", "dtype"),
    [("float", "float32"), ("FP16", "float16"), ("double", "float64"), ("long", "int64"), ("i32", "int32")],
)
def test_dtype_aliases_normalise(alias: str, dtype: str) -> None:
    assert parse_tensor_spec(f"x:{alias}:2").dtype == dtype


def test_parse_tolerates_surrounding_whitespace() -> None:
    spec = parse_tensor_spec("  x : float32 : batch = 2 , 3 : -1.5..2.5 ")
    assert spec.name == "x"
    assert spec.dims == (DimSpec(2, "batch"), DimSpec(3))
    assert (spec.low, spec.high) == (-1.5, 2.5)


def test_scalar_input_has_no_dims() -> None:
    spec = parse_tensor_spec("temperature:float32:")
    assert spec.dims == ()
    assert spec.shape({}) == ()


@pytest.mark.parametrize(
    "text",
    [
        "image:float32:batch=1,3,224,224",
        "input_ids:int64:batch=2,seq=128:0..30522",
        "mask:bool:batch=2,seq=5",
        "x:float16:4,4:-0.5..0.25",
        "noise:float64:n=3:-1..1",
        "t:float32:",
        "a.b:uint8:1,2,3:0..255",
    ],
)
def test_str_round_trips(text: str) -> None:
    spec = parse_tensor_spec(text)
    assert str(spec) == text
    assert parse_tensor_spec(str(spec)) == spec


def test_str_round_trips_normalised_forms() -> None:
    spec = parse_tensor_spec("x:fp32:batch=2,8:0.0..1.0")
    assert str(spec) == "x:float32:batch=2,8:0..1"
    assert parse_tensor_spec(str(spec)) == spec


# --- parse_tensor_spec: bad specs name the field -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("image", "NAME:DTYPE:DIMS"),
        ("image:float32", "NAME:DTYPE:DIMS"),
        ("image:float32:1,3:0..1:extra", "NAME:DTYPE:DIMS"),
        ("1image:float32:1,3", "NAME '1image'"),
        ("my-image:float32:1,3", "NAME 'my-image'"),
        (":float32:1,3", "NAME ''"),
        ("image:float33:1,3", "DTYPE 'float33'"),
        ("image:complex64:1,3", "DTYPE 'complex64'"),
        ("image:float32:1,three", "dim 'three'"),
        ("image:float32:1,2.5", "dim '2.5'"),
        ("image:float32:1,-3", "dim '-3'"),
        ("image:float32:batch=-1,3", "dim 'batch=-1'"),
        ("image:float32:1,0", "dim '0'"),
        ("image:float32:batch=x,3", "dim 'batch=x'"),
        ("image:float32:1,,3", "dim ''"),
        ("image:float32:2b=1,3", "label '2b'"),
        ("image:float32:=1,3", "label ''"),
        ("image:float32:1,3:0-1", "range '0-1'"),
        ("image:float32:1,3:0..", "range '0..'"),
        ("image:float32:1,3:a..b", "range 'a..b'"),
        ("image:float32:1,3:1..1", "range '1..1'"),
        ("image:float32:1,3:2..1", "range '2..1'"),
        ("ids:int64:1,3:0..2.5", "integer range"),
        ("ids:int32:1,3:0.5..10", "integer range"),
        ("mask:bool:1,3:0..2", "bool"),
    ],
)
def test_bad_spec_message_names_the_field(text: str, field: str) -> None:
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec(text)
    message = str(info.value)
    assert field in message
    assert f"'{text}'" in message


@pytest.mark.parametrize("text", ["ids:int8:4:0..1000", "ids:uint8:4:-1..10", "ids:int16:4:0..40000"])
def test_int_range_outside_dtype_is_an_input_spec_error(text: str) -> None:
    """A range the dtype cannot hold must be rejected with an InputSpecError, not crash later in numpy."""
    with pytest.raises(InputSpecError, match="range"):
        parse_and_draw(text)


@pytest.mark.parametrize("text", ["x:float32:4:-inf..inf", "x:float32:4:0..inf"])
def test_non_finite_float_range_is_an_input_spec_error(text: str) -> None:
    """Uniform draws need finite bounds; an infinite range must be rejected by the parser."""
    with pytest.raises(InputSpecError, match="range"):
        parse_and_draw(text)


# --- InputSpec ---------------------------------------------------------------------------------------


def test_input_spec_needs_at_least_one_tensor() -> None:
    with pytest.raises(InputSpecError, match="no inputs"):
        InputSpec(())


def test_input_spec_rejects_duplicate_names() -> None:
    with pytest.raises(InputSpecError, match="'x' is given twice"):
        spec_of("x:float32:2,3", "x:float32:2,4")


def test_shared_label_with_two_sizes_is_rejected() -> None:
    with pytest.raises(InputSpecError) as info:
        spec_of("a:float32:batch=2,3", "b:float32:batch=4,3")
    message = str(info.value)
    assert "'batch'" in message
    assert "4" in message
    assert "2" in message


def test_shared_label_with_one_size_is_one_dynamic_dim() -> None:
    spec = spec_of("features:float32:batch=2,seq=5,8", "mask:bool:batch=2,seq=5")
    assert spec.names == ("features", "mask")
    assert spec.example_sizes == {"batch": 2, "seq": 5}
    assert [d.label for d in spec.dynamic_dims] == ["batch", "seq"]
    assert spec.dim("seq") == DynamicDim("seq")


def test_declared_range_is_kept_and_missing_dims_get_defaults() -> None:
    spec = spec_of("x:float32:batch=2,seq=5", dims=(DynamicDim("batch", 1, 64),))
    assert spec.dim("batch") == DynamicDim("batch", 1, 64)
    assert spec.dim("seq") == DynamicDim("seq", 1, None)


@pytest.mark.parametrize(
    ("dim", "match"),
    [
        (DynamicDim("seq", 1, 8), "no input uses it"),
        (DynamicDim("batch", 4, 2), "bad range"),
        (DynamicDim("batch", -1, 8), "bad range"),
        (DynamicDim("batch", 3, 8), "outside its range"),
        (DynamicDim("batch", 1, 1), "outside its range"),
    ],
)
def test_bad_dynamic_dim_ranges(dim: DynamicDim, match: str) -> None:
    with pytest.raises(InputSpecError, match=match):
        spec_of("x:float32:batch=2,3", dims=(dim,))


def test_with_overrides_replaces_by_name_and_drops_unused_dims() -> None:
    spec = spec_of("x:float32:batch=2,seq=5", "y:int64:batch=2", dims=(DynamicDim("seq", 1, 16),))
    updated = spec.with_overrides([parse_tensor_spec("x:float32:batch=2,5"), parse_tensor_spec("z:bool:3")])
    assert updated.names == ("x", "y", "z")
    assert [d.label for d in updated.dynamic_dims] == ["batch"]
    assert spec.names == ("x", "y")  # the original is untouched


def test_to_json_describes_every_input() -> None:
    spec = spec_of("ids:int64:batch=2,seq=7:0..100", dims=(DynamicDim("seq", 1, 32),))
    data = spec.to_json()
    assert data["inputs"] == [
        {
            "name": "ids",
            "dtype": "int64",
            "shape": ["batch", "seq"],
            "example_shape": [2, 7],
            "range": [0, 100],
            "spec": "ids:int64:batch=2,seq=7:0..100",
        }
    ]
    assert data["dynamic_dims"] == {
        "batch": {"min": 1, "max": None, "example": 2},
        "seq": {"min": 1, "max": 32, "example": 7},
    }


# --- shape_cases -------------------------------------------------------------------------------------


def test_static_spec_has_the_export_case_and_other_values() -> None:
    cases = shape_cases(spec_of("x:float32:2,3"))
    assert [c.name for c in cases] == ["export", "values"]
    assert cases[0].sizes == cases[1].sizes == {}


def test_one_dynamic_dim_gets_min_and_larger_sizes() -> None:
    cases = shape_cases(spec_of("x:float32:batch=4,16"))
    assert cases[0].name == "export"
    assert cases[0].sizes == {"batch": 4}
    assert cases[1].name == "values" and cases[1].sizes == {"batch": 4}
    sizes = [c.sizes["batch"] for c in cases[1:]]
    assert 1 in sizes  # the smallest legal size
    assert any(s > 4 for s in sizes)
    assert len(sizes) == len(set(sizes))


def test_smallest_case_uses_declared_min() -> None:
    cases = shape_cases(spec_of("x:float32:batch=4,16", dims=(DynamicDim("batch", 3, None),)))
    sizes = [c.sizes["batch"] for c in cases]
    assert min(sizes) == 3


def test_two_dynamic_dims_are_also_moved_alone() -> None:
    spec = spec_of("x:float32:batch=2,seq=5")
    cases = shape_cases(spec)
    example = {"batch": 2, "seq": 5}
    assert cases[0].sizes == example
    moved_alone = {
        label
        for c in cases
        for label in example
        if c.sizes[label] != example[label] and all(c.sizes[o] == example[o] for o in example if o != label)
    }
    assert moved_alone == {"batch", "seq"}
    # both dims below and above their example sizes while the other stays put
    assert {"batch": 1, "seq": 5} in [c.sizes for c in cases]
    assert {"batch": 2, "seq": 1} in [c.sizes for c in cases]
    assert any(c.sizes["batch"] > 2 and c.sizes["seq"] == 5 for c in cases)
    assert any(c.sizes["seq"] > 5 and c.sizes["batch"] == 2 for c in cases)


@pytest.mark.parametrize(
    ("texts", "dims"),
    [
        (("x:float32:batch=1,3",), ()),
        (("x:float32:batch=1,seq=1",), ()),
        (("x:float32:batch=2,seq=5",), (DynamicDim("batch", 2, 2),)),
        (("x:float32:batch=8,3",), (DynamicDim("batch", 8, 8),)),
    ],
)
def test_no_duplicate_size_sets(texts: tuple[str, ...], dims: tuple[DynamicDim, ...]) -> None:
    cases = [c for c in shape_cases(spec_of(*texts, dims=dims)) if c.name != "values"]
    size_sets = [tuple(sorted(c.sizes.items())) for c in cases]
    assert len(size_sets) == len(set(size_sets))
    names = [c.name for c in cases]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "dims",
    [
        (DynamicDim("batch", 1, 5), DynamicDim("seq", 2, 6)),
        (DynamicDim("batch", 1, 4), DynamicDim("seq", 5, 5)),
        (DynamicDim("batch", 4, 4), DynamicDim("seq", 1, None)),
    ],
)
def test_every_case_is_within_the_declared_range(dims: tuple[DynamicDim, ...]) -> None:
    spec = spec_of("x:float32:batch=4,seq=5", dims=dims)
    for case in shape_cases(spec):
        for dim in dims:
            size = case.sizes[dim.label]
            assert dim.min <= size, case
            assert dim.max is None or size <= dim.max, case


def test_max_caps_the_larger_size() -> None:
    cases = shape_cases(spec_of("x:float32:batch=4,3", dims=(DynamicDim("batch", 1, 6),)))
    sizes = [c.sizes["batch"] for c in cases]
    assert max(sizes) == 6


def test_min_zero_max_zero_stays_at_zero() -> None:
    """A dim whose only legal size is 0 must never be verified at size 1."""
    spec = spec_of("x:float32:n=0,3", dims=(DynamicDim("n", 0, 0),))
    assert all(c.sizes["n"] == 0 for c in shape_cases(spec))


def test_case_describe_lists_input_shapes() -> None:
    spec = spec_of("features:float32:batch=2,seq=5,8", "mask:bool:batch=2,seq=5")
    case = shape_cases(spec)[0]
    assert case.describe(spec) == "features=[2, 5, 8] mask=[2, 5]"


# --- make_inputs -------------------------------------------------------------------------------------


def test_make_inputs_respects_dtype_and_shape() -> None:
    spec = spec_of(
        "image:float32:batch=2,3,4,4",
        "half:float16:batch=2,5",
        "ids:int64:batch=2,seq=7:100..200",
        "small:uint8:seq=7",
        "mask:bool:batch=2,seq=7",
    )
    arrays = make_inputs(spec, {"batch": 3, "seq": 9}, seed=0)
    assert list(arrays) == ["image", "half", "ids", "small", "mask"]
    assert arrays["image"].shape == (3, 3, 4, 4)
    assert arrays["image"].dtype == np.float32
    assert arrays["half"].shape == (3, 5)
    assert arrays["half"].dtype == np.float16
    assert arrays["ids"].shape == (3, 9)
    assert arrays["ids"].dtype == np.int64
    assert arrays["small"].dtype == np.uint8
    assert arrays["mask"].dtype == np.bool_
    assert arrays["mask"].shape == (3, 9)


def test_int_range_is_half_open() -> None:
    spec = spec_of("ids:int32:4000:5..8")
    values = make_inputs(spec, {}, seed=1)["ids"]
    assert values.min() >= 5
    assert values.max() < 8
    assert set(np.unique(values).tolist()) == {5, 6, 7}


def test_default_int_range_is_zero_to_ten() -> None:
    values = make_inputs(spec_of("ids:int64:2000"), {}, seed=2)["ids"]
    assert values.min() >= 0
    assert values.max() < 10


def test_float_range_is_respected() -> None:
    values = make_inputs(spec_of("x:float32:2000:-0.5..0.25"), {}, seed=3)["x"]
    assert values.min() >= -0.5
    assert values.max() <= 0.25
    assert values.std() > 0


def test_float_without_range_is_standard_normal() -> None:
    values = make_inputs(spec_of("x:float64:20000"), {}, seed=4)["x"]
    assert abs(values.mean()) < 0.05
    assert abs(values.std() - 1.0) < 0.05


def test_bool_inputs_have_both_values() -> None:
    values = make_inputs(spec_of("mask:bool:1000"), {}, seed=5)["mask"]
    assert values.any()
    assert not values.all()


def test_same_seed_same_data_other_seed_other_data() -> None:
    spec = spec_of("x:float32:batch=2,8", "ids:int64:batch=2,4:0..1000", "mask:bool:batch=2,16")
    first = make_inputs(spec, {"batch": 2}, seed=7)
    again = make_inputs(spec, {"batch": 2}, seed=7)
    other = make_inputs(spec, {"batch": 2}, seed=8)
    for name in spec.names:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["x"], other["x"])
    assert not np.array_equal(first["ids"], other["ids"])


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_scalar_inputs_are_zero_dim_arrays(dtype: str) -> None:
    value = make_inputs(spec_of(f"t:{dtype}:"), {}, seed=0)["t"]
    assert isinstance(value, np.ndarray)
    assert value.shape == ()
    assert value.dtype == np.dtype(dtype)


def test_tensor_spec_is_hashable_and_comparable() -> None:
    a = TensorSpec("x", "float32", (DimSpec(2, "batch"),))
    assert a == parse_tensor_spec("x:float32:batch=2")
    assert len({a, parse_tensor_spec("x:float32:batch=2")}) == 1


# --- bad input is refused at parse time (exit 2), not mid-run ----------------------------------------


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("x:float32:1:-1e308..1e308", "float32 ([-3.4028235e+38, 3.4028235e+38])"),
        ("x:float32:1:0..1e39", "float32 ([-3.4028235e+38, 3.4028235e+38])"),
        ("x:float16:1:0..70000", "float16 ([-65504, 65504])"),
        ("x:float16:1:-65505..0", "float16 ([-65504, 65504])"),
    ],
)
def test_float_range_outside_the_dtype_is_refused(text: str, limits: str) -> None:
    """numpy's uniform overflowed (exit 3) on ranges the dtype cannot hold."""
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec(text)
    message = str(info.value)
    assert f"range '{text.rsplit(':', 1)[1]}'" in message
    assert limits in message
    assert "\n" not in message


def test_float64_range_whose_width_overflows_is_refused() -> None:
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec("x:float64:1:-1e308..1e308")
    message = str(info.value)
    assert "range '-1e308..1e308'" in message
    assert "too wide" in message
    assert "1.7976931e+308" in message
    for legal in ("x:float16:8:-65504..65504", "x:float64:8:-8e307..8e307"):  # the limits themselves draw
        assert np.isfinite(parse_and_draw(legal)["x"]).all()


def test_int64_range_up_to_two_to_the_63_is_exact() -> None:
    """Bounds parsed through float lost precision: 2**63 - 1 was read as 2**63 and refused."""
    spec = parse_tensor_spec("x:int64:4:9223372036854775806..9223372036854775807")
    assert (spec.low, spec.high) == (2**63 - 2, 2**63 - 1)
    assert (parse_and_draw(str(spec))["x"] == 2**63 - 2).all()
    with pytest.raises(InputSpecError, match=r"range '0\.\.9223372036854775809' does not fit int64"):
        parse_tensor_spec("x:int64:4:0..9223372036854775809")


@pytest.mark.parametrize(
    ("text", "char"),
    [
        ("x:float32:\uff11,\uff13", "'\uff11' (U+FF11 FULLWIDTH DIGIT ONE)"),
        ("x:float32:batch=\u0663,4", "'\u0663' (U+0663 ARABIC-INDIC DIGIT THREE)"),
        ("x:float32:1,3:0..\uff11", "'\uff11' (U+FF11 FULLWIDTH DIGIT ONE)"),
        ("x:float32:1,3:\u22121..1", "'\u2212' (U+2212 MINUS SIGN)"),
        ("x:int64:2:0..\u0967\u0966", "'\u0967' (U+0967 DEVANAGARI DIGIT ONE)"),
        ("x\uff1afloat32\uff1a1", "'\uff1a' (U+FF1A FULLWIDTH COLON)"),
        ("x:float32:\u20073", "U+2007 FIGURE SPACE"),
    ],
)
def test_non_ascii_characters_are_refused_by_name(text: str, char: str) -> None:
    """``int('\uff11')`` is 1: a full-width spec used to be read as ASCII."""
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec(text)
    assert char in str(info.value)
    assert "non-ASCII" in str(info.value)


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("x:float32:1_0", "dim '1_0'"),
        ("x:float32:+3", "dim '+3'"),
        ("x:float32:1:0..1_0", "range '0..1_0'"),
        ("x:float32:1:0x0..0x10", "range '0x0..0x10'"),
        ("x:float32:1:-Infinity..0", "range '-Infinity..0' must be finite"),
        ("x:float32:1:nan..1", "range 'nan..1' must be finite"),
        ("x:float32:99999999999999999999", "dim '99999999999999999999' is too large"),
    ],
)
def test_only_plain_ascii_number_syntax_is_legal(text: str, part: str) -> None:
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec(text)
    assert part in str(info.value)


def test_control_characters_are_escaped_in_the_one_line_message() -> None:
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec("a\nb:float32:1")
    assert "\n" not in str(info.value)
    assert r"NAME 'a\nb'" in str(info.value)


def test_example_shape_too_large_to_draw_is_refused() -> None:
    """``batch=100000000,1000`` raised MemoryError (exit 3) while drawing golden inputs."""
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec("x:float32:batch=100000000,1000")
    message = str(info.value)
    assert "[100000000, 1000] at the example size" in message
    assert "400 GB as float32" in message
    assert f"{MAX_ELEMENTS} elements" in message
    assert "use a smaller example size; the dynamic dim's range can still be large" in message


def test_largest_verification_case_too_large_to_draw_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example fits, but the ``large`` case (2x + 1) the verifier draws does not."""
    monkeypatch.setattr(specs_module, "memory_limit", lambda: None)  # only the element cap, on any machine
    tensor = parse_tensor_spec("x:uint8:batch=1500000000")
    with pytest.raises(InputSpecError) as info:
        InputSpec((tensor,))
    message = str(info.value)
    assert "input 'x': shape [3000000001] at verification case 'large'" in message
    assert "use a smaller example size" in message
    capped = InputSpec((tensor,), (DynamicDim("batch", 1, 1500000000),))  # a max keeps it in bounds
    assert max(c.sizes["batch"] for c in shape_cases(capped)) == 1500000000


def test_cli_refuses_bad_input_specs_with_exit_2(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not read: the spec fails first")
    for spec, part in [
        ("x:float32:1:-1e308..1e308", "range '-1e308..1e308'"),
        ("x:float32:batch=100000000,1000", "400 GB"),
        ("x:float32:\uff11,\uff13", "U+FF11"),
    ]:
        result = CliRunner().invoke(app, ["export", str(checkpoint), "--input", spec, "--out", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert part in " ".join(result.output.split())
