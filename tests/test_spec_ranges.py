"""Dim ranges written in an input spec (``batch=1..16``, ``h=64..512%4``, ``h=64%4``): parsing, the strict
messages, how a written range meets a recipe's ``[inputs.dims]``, and the legal sizes every shape case draws
(issue 23: ranges only a recipe could write, and verification that stopped short of the declared maximum)."""

from __future__ import annotations

import pytest

import exporter.specs.inputs as specs_module
from exporter.benchmark.latency import batch_plans
from exporter.errors import InputSpecError
from exporter.quantize.calibration import load_samples
from exporter.specs.inputs import (
    DimSpec,
    DynamicDim,
    InputSpec,
    larger_size,
    parse_tensor_spec,
    shape_cases,
    trace_sizes,
)


def spec_of(*texts: str, dims: tuple[DynamicDim, ...] = ()) -> InputSpec:
    return InputSpec(tuple(parse_tensor_spec(t) for t in texts), dims)


# --- parsing ---------------------------------------------------------------------------------------------


def test_the_issues_spelling_parses_to_ranges_with_low_as_the_example() -> None:
    tensor = parse_tensor_spec("mels:float32:batch=1..16,frames=40..400,40")
    assert tensor.dims == (DimSpec(1, "batch", 1, 16), DimSpec(40, "frames", 40, 400), DimSpec(40))
    spec = InputSpec((tensor,))
    assert spec.dynamic_dims == (DynamicDim("batch", 1, 16), DynamicDim("frames", 40, 400))
    assert spec.example_sizes == {"batch": 1, "frames": 40}


def test_a_multiple_rounds_the_example_and_the_range_inward() -> None:
    tensor = parse_tensor_spec("x:float32:h=66..514%4")
    assert tensor.dims == (DimSpec(68, "h", 66, 514, 4),)  # LOW rounded up to the multiple
    assert InputSpec((tensor,)).dim("h") == DynamicDim("h", 68, 512, 4)
    assert DynamicDim("h", 66, 514, 4) == DynamicDim("h", 68, 512, 4)  # the same legal sizes


def test_size_with_a_multiple_keeps_the_size_and_is_unbounded() -> None:
    spec = spec_of("x:float32:h=64%4")
    assert spec.example_sizes == {"h": 64}
    assert spec.dim("h") == DynamicDim("h", 4, None, 4)  # multiples of 4 from 4 up


@pytest.mark.parametrize(
    "text",
    [
        "mels:float32:batch=1..16,frames=40..400,40",
        "x:float32:batch=1..8,3,h=64..512%4,w=64..512%4",
        "x:float32:h=66..514%4",
        "x:float32:h=64%4",
        "ids:int64:batch=2..2,seq=8:0..100",
    ],
)
def test_ranges_round_trip_through_str(text: str) -> None:
    tensor = parse_tensor_spec(text)
    assert str(tensor) == text
    assert parse_tensor_spec(str(tensor)) == tensor


def test_whitespace_around_the_range_is_tolerated() -> None:
    assert parse_tensor_spec("x:float32: h = 64 .. 512 % 4 ").dims == (DimSpec(64, "h", 64, 512, 4),)


@pytest.mark.parametrize(
    ("dims", "part"),
    [
        ("batch=16..1", "needs LOW <= HIGH, as in batch=1..16"),
        ("h=64..512%0", "the multiple after % must be at least 1"),
        ("h=64%0", "the multiple after % must be at least 1"),
        ("h=65..67%4", "holds no multiple of 4 between 65 and 67"),
        ("h=66%4", "example size 66 is not a multiple of 4; use 64 or 68"),
        ("h=2%4", "example size 2 is not a multiple of 4; use 4"),
        ("1..16", "has a range but no label: give it one, as in batch=1..16"),
        ("3%4", "has a range but no label"),
        ("batch=1...16", "is not label=SIZE, label=LOW..HIGH or either with %N"),
        ("batch=1..", "is not label=SIZE, label=LOW..HIGH"),
        ("batch=..16", "is not label=SIZE, label=LOW..HIGH"),
        ("h=64..512%4%2", "is not label=SIZE, label=LOW..HIGH"),
        ("h=64..512%", "is not label=SIZE, label=LOW..HIGH"),
        ("batch=-1..16", "is not label=SIZE, label=LOW..HIGH"),
        ("batch=1..1000000000000000000", "too large"),
        ("h=64..512%1000000000000000000", "too large"),
    ],
)
def test_bad_dim_ranges_say_what_is_wrong_on_one_line(dims: str, part: str) -> None:
    text = f"x:float32:{dims},3"
    with pytest.raises(InputSpecError) as info:
        parse_tensor_spec(text)
    message = str(info.value)
    assert part in message
    assert f"bad input spec '{text}'" in message and f"dim '{dims}'" in message
    assert "\n" not in message


def test_a_non_ascii_digit_in_a_range_is_named() -> None:
    with pytest.raises(InputSpecError, match=r"DIMS has the non-ASCII character .*U\+FF14.* - %"):
        parse_tensor_spec("x:float32:h=64..512%\uff14")


# --- ranges across inputs and against [inputs.dims] -------------------------------------------------


def test_a_shared_label_with_two_ranges_names_both_inputs() -> None:
    with pytest.raises(InputSpecError) as info:
        spec_of("a:float32:batch=1..16,3", "b:float32:batch=1..8,3")
    message = str(info.value)
    assert "dim 'batch' has the range 1..8 in input 'b' but 1..16 in input 'a'" in message


def test_a_shared_label_with_one_range_may_give_it_once() -> None:
    spec = spec_of("a:float32:batch=1..16,3", "b:float32:batch=1,5")
    assert spec.dim("batch") == DynamicDim("batch", 1, 16)


def test_a_shared_label_whose_sizes_differ_explains_the_ranges_example() -> None:
    with pytest.raises(InputSpecError) as info:
        spec_of("a:float32:batch=1..16,3", "b:float32:batch=4,5")
    assert "example size 4 here but 1" in str(info.value) and "its LOW, rounded up" in str(info.value)


def test_a_written_range_that_contradicts_the_given_dims_is_refused() -> None:
    with pytest.raises(InputSpecError, match=r"range 1\.\.16 in input 'x' but 1\.\.8 in the dim ranges"):
        spec_of("x:float32:batch=1..16,3", dims=(DynamicDim("batch", 1, 8),))
    assert spec_of("x:float32:batch=1..16,3", dims=(DynamicDim("batch", 1, 16),)).dim("batch").max == 16


def test_an_override_with_a_range_replaces_the_recipes_range() -> None:
    recipe = spec_of("x:float32:batch=2,seq=5", dims=(DynamicDim("batch", 1, 8), DynamicDim("seq", 1, 64)))
    updated = recipe.with_overrides([parse_tensor_spec("x:float32:batch=1..16,seq=5")])
    assert updated.dim("batch") == DynamicDim("batch", 1, 16)
    assert updated.dim("seq") == DynamicDim("seq", 1, 64)  # not written: the recipe's range stands
    kept = recipe.with_overrides([parse_tensor_spec("x:float32:batch=4,seq=5")])
    assert kept.dim("batch") == DynamicDim("batch", 1, 8)


@pytest.mark.parametrize(
    ("dim", "match"),
    [
        (DynamicDim("h", 65, 67, 4), r"no multiple of 4 lies in \[65, 67\]"),
        (DynamicDim("h", 1, 64, 0), "multiple_of must be an integer >= 1"),
        (DynamicDim("h", 1, 64, 3), "example size 8 is not a multiple of 3"),
        (DynamicDim("h", 12, 64, 4), "outside its range"),
    ],
)
def test_bad_multiples_in_the_given_dims(dim: DynamicDim, match: str) -> None:
    with pytest.raises(InputSpecError, match=match):
        spec_of("x:float32:h=8", dims=(dim,))


def test_to_json_carries_the_multiple_only_where_there_is_one() -> None:
    spec = spec_of("x:float32:batch=1..8,3,h=64..512%4")
    data = spec.to_json()
    assert data["dynamic_dims"] == {
        "batch": {"min": 1, "max": 8, "example": 1},
        "h": {"min": 64, "max": 512, "example": 64, "multiple_of": 4},
    }
    assert data["inputs"][0]["spec"] == "x:float32:batch=1..8,3,h=64..512%4"  # type: ignore[index]


# --- the sizes drawn ------------------------------------------------------------------------------


def test_verification_reaches_the_declared_maximum() -> None:
    """The issue's run checked frames up to 321 (2 * 160 + 1) although 400 was declared."""
    cases = {c.name: c.sizes for c in shape_cases(spec_of("mels:float32:batch=1..16,frames=40..400,40"))}
    assert cases["max"] == {"batch": 16, "frames": 400}
    assert max(sizes["frames"] for sizes in cases.values()) == 400


def test_dims_without_a_maximum_stay_at_their_example_in_the_max_case() -> None:
    cases = {c.name: c.sizes for c in shape_cases(spec_of("x:float32:batch=1..16,seq=5"))}
    assert cases["max"] == {"batch": 16, "seq": 5}


def test_no_max_case_without_a_declared_maximum() -> None:
    assert "max" not in [c.name for c in shape_cases(spec_of("x:float32:batch=2,seq=5"))]


@pytest.mark.parametrize(
    "text",
    [
        "x:float32:batch=1..8,3,h=64..512%4,w=64..512%4",
        "x:float32:h=66..514%4",
        "x:float32:h=64%4,w=24..40%8",
        "x:float32:h=8..8%8,w=4..12%4",
        "x:float32:n=3..300%3",
    ],
)
def test_every_case_size_is_a_legal_multiple(text: str) -> None:
    spec = spec_of(text)
    cases = shape_cases(spec)
    for case in cases:
        for dim in spec.dynamic_dims:
            assert dim.allows(case.sizes[dim.label]), (case, dim)
    for dim in spec.dynamic_dims:
        assert dim.allows(trace_sizes(spec)[dim.label])
        drawn = {case.sizes[dim.label] for case in cases}
        if dim.max is not None and dim.max > dim.min:
            assert len(drawn) >= 2 and max(drawn) == dim.max


def test_sizes_step_by_the_multiple() -> None:
    cases = {c.name: c.sizes["h"] for c in shape_cases(spec_of("x:float32:h=64..512%4"))}
    assert cases == {"export": 64, "values": 64, "next": 68, "large": 132, "max": 512}
    assert larger_size(DynamicDim("n"), 4) == 9  # without a multiple: odd, as before


def test_trace_sizes_keep_the_multiple_base_above_one() -> None:
    """torch.export specializes a size of 1; for ``4 * _h`` that is the base, so h must be at least 8."""
    assert trace_sizes(spec_of("x:float32:h=4..64%4")) == {"h": 8}
    assert trace_sizes(spec_of("x:float32:h=4..4%4")) == {"h": 4}  # the only legal size
    assert trace_sizes(spec_of("x:float32:batch=1..16")) == {"batch": 2}


def test_a_declared_maximum_too_large_to_draw_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified at the maximum, so a maximum that cannot be drawn is a usage error up front."""
    monkeypatch.setattr(specs_module, "memory_limit", lambda: None)  # only the element cap, on any machine
    with pytest.raises(InputSpecError) as info:
        spec_of("x:uint8:batch=1..3000000000")
    message = str(info.value)
    assert "shape [3000000000] at verification case 'max'" in message
    assert "lower the dim's declared maximum" in message


def test_benchmark_batches_and_synthetic_calibration_keep_to_the_multiple() -> None:
    spec = spec_of("x:float32:batch=4..16%4,8")
    plans = batch_plans(spec, "batch", (1, 4, 6, 8, 32), seed=0)
    assert [p.batch for p in plans] == [4, 8]
    samples = load_samples(None, spec, 2, seed=0)
    assert all(sample["x"].shape == (4, 8) for sample in samples.samples)
