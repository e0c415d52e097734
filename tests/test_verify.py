"""Verification: element-wise comparison rules, golden data and judging a runner against the reference."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from exporter.errors import InputSpecError
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec, ShapeCase, parse_tensor_spec, shape_cases
from exporter.verify.parity import (
    DEFAULT_TOLERANCE,
    NonFinite,
    Tolerance,
    compare_outputs,
    count_nonfinite,
    make_golden,
    nonfinite_summary,
    verify_runner,
)

EXACT = Tolerance(atol=0.0, rtol=0.0)


def f64(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


# --- compare_outputs: tolerance rule -----------------------------------------------------------------


def test_identical_outputs_pass() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    result = compare_outputs("y", x, x.copy(), DEFAULT_TOLERANCE)
    assert result.passed
    assert result.max_abs_diff == 0.0
    assert result.max_rel_diff == 0.0
    assert result.mismatched == 0
    assert result.total == 12
    assert result.nonfinite_mismatch == 0
    assert result.message is None
    assert result.shape == [3, 4]
    assert result.reference_shape == [3, 4]
    assert result.cosine == pytest.approx(1.0)


def test_exactly_at_the_bound_passes() -> None:
    # allowed = atol + rtol*|b| = 0.25 + 0.25*1.0 = 0.5; every number here is exact in binary
    tolerance = Tolerance(atol=0.25, rtol=0.25)
    assert compare_outputs("y", f64(1.5), f64(1.0), tolerance).passed
    assert compare_outputs("y", f64(0.5), f64(1.0), tolerance).passed


def test_just_past_the_bound_fails() -> None:
    tolerance = Tolerance(atol=0.25, rtol=0.25)
    above = 1.5 + 2.0**-20
    below = 0.5 - 2.0**-20
    result = compare_outputs("y", f64(above, below, 1.0), f64(1.0, 1.0, 1.0), tolerance)
    assert not result.passed
    assert result.mismatched == 2
    assert result.total == 3
    assert result.message is not None
    assert "2/3" in result.message
    assert "atol=0.25" in result.message
    assert "rtol=0.25" in result.message


def test_atol_alone_at_zero_reference() -> None:
    tolerance = Tolerance(atol=0.125, rtol=0.5)
    assert compare_outputs("y", f64(0.125), f64(0.0), tolerance).passed
    assert not compare_outputs("y", f64(np.nextafter(0.125, 1.0)), f64(0.0), tolerance).passed


def test_rtol_scales_with_the_reference_not_the_actual() -> None:
    tolerance = Tolerance(atol=0.0, rtol=0.5)
    assert compare_outputs("y", f64(1.0), f64(2.0), tolerance).passed  # |1-2| <= 0.5*2
    assert not compare_outputs("y", f64(2.0), f64(1.0), tolerance).passed  # |2-1| > 0.5*1


def test_zero_tolerance_needs_equality() -> None:
    assert compare_outputs("y", f64(1.0, 2.0), f64(1.0, 2.0), EXACT).passed
    assert not compare_outputs("y", f64(1.0, np.nextafter(2.0, 3.0)), f64(1.0, 2.0), EXACT).passed


def test_float32_outputs_use_the_tolerance() -> None:
    expected = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    actual = expected + np.float32(5e-5)
    assert compare_outputs("y", actual, expected, Tolerance(atol=1e-4, rtol=0.0)).passed
    assert not compare_outputs("y", actual, expected, Tolerance(atol=1e-5, rtol=0.0)).passed


def test_reported_differences() -> None:
    result = compare_outputs("y", f64(1.0, 2.5, 4.0), f64(1.0, 2.0, 5.0), EXACT)
    assert result.max_abs_diff == pytest.approx(1.0)
    assert result.max_rel_diff == pytest.approx(0.25)  # 0.5/2 vs 1/5
    assert result.mismatched == 2


# --- compare_outputs: shapes, NaN/Inf, integers --------------------------------------------------------


def test_shape_mismatch_fails_without_diffs() -> None:
    result = compare_outputs("logits", np.zeros((1, 3)), np.zeros((2, 3)), DEFAULT_TOLERANCE)
    assert not result.passed
    assert result.max_abs_diff is None
    assert result.max_rel_diff is None
    assert result.cosine is None
    assert result.shape == [1, 3]
    assert result.reference_shape == [2, 3]
    assert result.mismatched == result.total == 6
    assert result.message is not None
    assert "shape" in result.message
    assert "[1, 3]" in result.message
    assert "[2, 3]" in result.message


def test_broadcastable_shape_still_fails() -> None:
    result = compare_outputs("y", np.ones((1, 4)), np.ones((3, 4)), DEFAULT_TOLERANCE)
    assert not result.passed
    assert result.message is not None
    assert "shape" in result.message


def test_nan_in_both_at_the_same_place_passes() -> None:
    result = compare_outputs("y", f64(1.0, np.nan, 3.0), f64(1.0, np.nan, 3.0), EXACT)
    assert result.passed
    assert result.nonfinite_mismatch == 0
    assert result.max_abs_diff == 0.0


def test_nan_only_in_actual_fails() -> None:
    result = compare_outputs("y", f64(1.0, np.nan, 3.0), f64(1.0, 2.0, 3.0), DEFAULT_TOLERANCE)
    assert not result.passed
    assert result.nonfinite_mismatch == 1
    assert result.mismatched == 1
    assert result.message is not None
    assert "NaN/Inf" in result.message


def test_nan_only_in_reference_fails() -> None:
    result = compare_outputs("y", f64(1.0, 2.0), f64(1.0, np.nan), DEFAULT_TOLERANCE)
    assert not result.passed
    assert result.nonfinite_mismatch == 1


def test_nan_at_different_places_fails() -> None:
    result = compare_outputs("y", f64(np.nan, 2.0), f64(1.0, np.nan), DEFAULT_TOLERANCE)
    assert not result.passed
    assert result.nonfinite_mismatch == 2


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_same_infinities_pass() -> None:
    result = compare_outputs("y", f64(np.inf, -np.inf, 0.0), f64(np.inf, -np.inf, 0.0), EXACT)
    assert result.passed
    assert result.nonfinite_mismatch == 0
    assert result.max_abs_diff == 0.0


def test_same_infinities_compare_without_numpy_warnings() -> None:
    """inf - inf must not be computed: its RuntimeWarning is an error wherever warnings are errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare_outputs("y", f64(np.inf, 1.0), f64(np.inf, 1.0), EXACT)
    assert result.passed


def test_opposite_infinities_fail() -> None:
    result = compare_outputs("y", f64(np.inf), f64(-np.inf), Tolerance(atol=1e30, rtol=1e30))
    assert not result.passed
    assert result.nonfinite_mismatch == 1


def test_infinity_against_a_finite_value_fails() -> None:
    assert not compare_outputs("y", f64(np.inf), f64(1e308), Tolerance(atol=1e30, rtol=1.0)).passed
    assert not compare_outputs("y", f64(1e308), f64(np.inf), Tolerance(atol=1e30, rtol=1.0)).passed


def test_int_outputs_must_match_exactly() -> None:
    expected = np.array([1, 2, 3], dtype=np.int64)
    loose = Tolerance(atol=10.0, rtol=10.0)
    assert compare_outputs("ids", expected.copy(), expected, loose).passed
    result = compare_outputs("ids", np.array([1, 2, 4], dtype=np.int64), expected, loose)
    assert not result.passed
    assert result.mismatched == 1


def test_float_actual_against_int_reference_is_exact() -> None:
    expected = np.array([1, 2], dtype=np.int32)
    assert not compare_outputs("ids", np.array([1.0, 2.001]), expected, Tolerance(atol=0.1, rtol=0.0)).passed


def test_bool_outputs_must_match_exactly() -> None:
    expected = np.array([True, False, True])
    assert compare_outputs("mask", expected.copy(), expected, DEFAULT_TOLERANCE).passed
    result = compare_outputs("mask", np.array([True, True, True]), expected, Tolerance(atol=1.0, rtol=1.0))
    assert not result.passed
    assert result.mismatched == 1


def test_large_int64_outputs_that_differ_by_one_fail() -> None:
    """Integers above 2**53 collapse to the same float64; an exact comparison must still tell them apart."""
    expected = np.array([2**53], dtype=np.int64)
    actual = np.array([2**53 + 1], dtype=np.int64)
    assert not compare_outputs("ids", actual, expected, DEFAULT_TOLERANCE).passed


# --- compare_outputs: cosine -------------------------------------------------------------------------


def test_cosine_identical_is_one() -> None:
    x = np.random.default_rng(1).standard_normal(50)
    assert compare_outputs("y", x, x.copy(), DEFAULT_TOLERANCE).cosine == pytest.approx(1.0)


def test_cosine_opposite_is_minus_one() -> None:
    x = np.random.default_rng(2).standard_normal(50)
    result = compare_outputs("y", -x, x, DEFAULT_TOLERANCE)
    assert result.cosine == pytest.approx(-1.0)
    assert not result.passed


def test_cosine_both_zero_is_one() -> None:
    assert compare_outputs("y", np.zeros(5), np.zeros(5), DEFAULT_TOLERANCE).cosine == 1.0


def test_cosine_one_zero_is_zero() -> None:
    assert compare_outputs("y", np.zeros(3), f64(1.0, 2.0, 3.0), DEFAULT_TOLERANCE).cosine == 0.0


def test_cosine_orthogonal_is_zero() -> None:
    assert compare_outputs("y", f64(1.0, 0.0), f64(0.0, 1.0), DEFAULT_TOLERANCE).cosine == pytest.approx(0.0)


def test_cosine_ignores_matching_non_finite_elements() -> None:
    result = compare_outputs("y", f64(1.0, np.nan, 2.0), f64(1.0, np.nan, 2.0), DEFAULT_TOLERANCE)
    assert result.cosine == pytest.approx(1.0)


# --- make_golden / verify_runner -------------------------------------------------------------------


SPEC_TEXT = "x:float32:batch=2,4"


def linear_spec() -> InputSpec:
    return InputSpec((parse_tensor_spec(SPEC_TEXT),))


def tiny_linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3).eval()


class NeedsBatchOfTwo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = tiny_linear()

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[0] == 2, f"batch must be 2, got {x.shape[0]}"
        return self.linear(x)


class ReturnsTwo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = tiny_linear()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.linear(x)
        return y, y * 2


class ReturnsNothing(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {}


def test_make_golden_records_every_case() -> None:
    spec = linear_spec()
    cases = shape_cases(spec)
    golden = make_golden(EagerRunner(tiny_linear(), spec.names), spec, cases, seed=10)
    assert [g.case for g in golden] == cases
    assert [g.seed for g in golden] == [10 + i for i in range(len(cases))]
    for item in golden:
        batch = item.case.sizes["batch"]
        assert item.inputs["x"].shape == (batch, 4)
        assert item.inputs["x"].dtype == np.float32
        assert len(item.outputs) == 1
        assert item.outputs[0].shape == (batch, 3)
        assert item.output_names == ["output"]
        assert item.file_stem == item.case.name


def test_make_golden_is_deterministic() -> None:
    spec = linear_spec()
    cases = shape_cases(spec)
    first = make_golden(EagerRunner(tiny_linear(), spec.names), spec, cases, seed=3)
    again = make_golden(EagerRunner(tiny_linear(), spec.names), spec, cases, seed=3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.inputs["x"], b.inputs["x"])
        np.testing.assert_array_equal(a.outputs[0], b.outputs[0])


def test_make_golden_names_nested_outputs() -> None:
    spec = linear_spec()
    golden = make_golden(
        EagerRunner(ReturnsTwo().eval(), spec.names), spec, [ShapeCase("export", {"batch": 2})], 0
    )
    assert golden[0].output_names == ["0", "1"]
    np.testing.assert_allclose(golden[0].outputs[1], 2 * golden[0].outputs[0])


def test_make_golden_names_the_case_the_reference_fails_at() -> None:
    spec = linear_spec()
    runner = EagerRunner(NeedsBatchOfTwo().eval(), spec.names)
    with pytest.raises(InputSpecError) as info:
        make_golden(runner, spec, shape_cases(spec), seed=0)
    message = str(info.value)
    assert "'min'" in message
    assert "x=[1, 4]" in message
    assert "AssertionError" in message
    assert "batch must be 2" in message


def test_make_golden_rejects_a_model_without_tensor_outputs() -> None:
    spec = linear_spec()
    runner = EagerRunner(ReturnsNothing(), spec.names)
    with pytest.raises(InputSpecError, match="no tensors"):
        make_golden(runner, spec, [ShapeCase("export", {"batch": 2})], seed=0)


def test_identical_copy_passes() -> None:
    spec = linear_spec()
    model = tiny_linear()
    golden = make_golden(EagerRunner(model, spec.names), spec, shape_cases(spec), seed=0)
    result = verify_runner(EagerRunner(copy.deepcopy(model), spec.names), golden, DEFAULT_TOLERANCE, "copy")
    assert result.passed
    assert result.failures() == []
    assert result.backend == "pytorch-eager"
    assert result.artifact == "copy"
    assert [c.case for c in result.cases] == [g.case.name for g in golden]
    for case, item in zip(result.cases, golden, strict=True):
        assert case.passed
        assert case.sizes == item.case.sizes
        assert case.input_shapes == {"x": list(item.inputs["x"].shape)}
        assert [o.name for o in case.outputs] == ["output"]
        assert case.outputs[0].max_abs_diff == 0.0


def test_perturbed_copy_fails() -> None:
    spec = linear_spec()
    model = tiny_linear()
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed.bias.add_(1e-2)
    golden = make_golden(EagerRunner(model, spec.names), spec, shape_cases(spec), seed=0)
    result = verify_runner(EagerRunner(perturbed, spec.names), golden, DEFAULT_TOLERANCE, "perturbed")
    assert not result.passed
    assert all(not c.passed for c in result.cases)
    assert all(c.outputs[0].max_abs_diff == pytest.approx(1e-2, rel=1e-2) for c in result.cases)
    failures = result.failures()
    assert len(failures) == len(golden)
    assert failures[0].startswith("export/output: ")
    data = result.to_json()
    assert data["passed"] is False
    assert data["tolerance"] == {"atol": DEFAULT_TOLERANCE.atol, "rtol": DEFAULT_TOLERANCE.rtol}
    assert [c["passed"] for c in data["cases"]] == [False] * len(golden)


def test_perturbation_within_tolerance_passes() -> None:
    spec = linear_spec()
    model = tiny_linear()
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed.bias.add_(1e-2)
    golden = make_golden(EagerRunner(model, spec.names), spec, shape_cases(spec), seed=0)
    result = verify_runner(EagerRunner(perturbed, spec.names), golden, Tolerance(atol=2e-2, rtol=0.0), "p")
    assert result.passed


def test_runner_that_fails_at_some_shapes_records_the_error() -> None:
    spec = linear_spec()
    golden = make_golden(EagerRunner(tiny_linear(), spec.names), spec, shape_cases(spec), seed=0)
    result = verify_runner(EagerRunner(NeedsBatchOfTwo().eval(), spec.names), golden, DEFAULT_TOLERANCE, "a")
    by_case = {c.case: c for c in result.cases}
    assert by_case["export"].passed
    assert by_case["min"].error is not None
    assert "failed to run" in by_case["min"].error
    assert "AssertionError" in by_case["min"].error
    assert not by_case["min"].passed
    assert not result.passed
    assert any(line.startswith("min: ") for line in result.failures())


def test_runner_with_extra_outputs_fails() -> None:
    spec = linear_spec()
    model = tiny_linear()
    golden = make_golden(EagerRunner(model, spec.names), spec, [ShapeCase("export", {"batch": 2})], seed=0)
    two = ReturnsTwo().eval()
    two.linear.load_state_dict(model.state_dict())
    result = verify_runner(EagerRunner(two, spec.names), golden, DEFAULT_TOLERANCE, "two")
    case = result.cases[0]
    assert case.error is not None
    assert "2 outputs" in case.error
    assert case.outputs[0].passed  # the overlapping output is still compared
    assert not case.passed
    assert not result.passed


def test_no_cases_is_not_a_pass() -> None:
    spec = linear_spec()
    assert not verify_runner(EagerRunner(tiny_linear(), spec.names), [], DEFAULT_TOLERANCE, "x").passed


# --- non-finite reference outputs ----------------------------------------------------------------------


class LogAndDivideByZero(nn.Module):
    """NaN where x < 0 (log), +Inf where x > 0 and -Inf where x < 0 (x / 0): the reference is broken."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.log(x), x / 0


def test_count_nonfinite_counts_nan_and_each_infinity_separately() -> None:
    values = np.array([np.nan, np.inf, -np.inf, -np.inf, 1.0, np.nan], dtype=np.float32)
    counts = count_nonfinite(values)
    assert counts == NonFinite(nan=2, posinf=1, neginf=2, elements=6)
    assert counts.inf == 3
    assert counts.describe() == "2 NaN, 1 +Inf, 2 -Inf"


def test_count_nonfinite_is_none_for_finite_and_integer_outputs() -> None:
    assert count_nonfinite(np.array([0.0, -1.5, 3e38], dtype=np.float32)) is None
    assert count_nonfinite(np.array([1, 2, 3], dtype=np.int64)) is None
    assert count_nonfinite(np.array([True, False])) is None
    assert count_nonfinite(np.zeros((0, 4), dtype=np.float32)) is None


def test_make_golden_counts_the_reference_nan_and_inf_per_output_and_case() -> None:
    spec = linear_spec()
    cases = shape_cases(spec)
    golden = make_golden(EagerRunner(LogAndDivideByZero(), spec.names), spec, cases, seed=0)
    for item in golden:
        x = item.inputs["x"]
        negative, positive = int(np.count_nonzero(x < 0)), int(np.count_nonzero(x > 0))
        logs = NonFinite(nan=negative, posinf=0, neginf=0, elements=x.size) if negative else None
        assert item.nonfinite.get("0") == logs
        assert item.nonfinite["1"] == NonFinite(nan=0, posinf=positive, neginf=negative, elements=x.size)
    summary = nonfinite_summary(golden)
    assert summary is not None
    first = golden[0].nonfinite["0"].nan  # the export case has 8 standard-normal draws, some negative
    assert summary.startswith(f"output '0': {first} NaN at case {cases[0].name}")
    assert "output '1': " in summary and "+Inf" in summary and "-Inf" in summary


def test_make_golden_of_a_finite_model_records_no_nonfinite_outputs() -> None:
    spec = linear_spec()
    golden = make_golden(EagerRunner(tiny_linear(), spec.names), spec, shape_cases(spec), seed=0)
    assert all(item.nonfinite == {} for item in golden)
    assert nonfinite_summary(golden) is None


def test_nonfinite_summary_spells_out_a_few_cases_per_output() -> None:
    spec = linear_spec()
    cases = [ShapeCase(f"case{i}", {"batch": 2}) for i in range(5)]
    golden = make_golden(EagerRunner(LogAndDivideByZero(), spec.names), spec, cases, seed=0)
    summary = nonfinite_summary(golden, limit=2)
    assert summary is not None
    assert "at case case1, and 3 more cases; output '1'" in summary
    assert "case2" not in summary
