"""Verification stage: run a backend on golden inputs and judge each output against the reference.

An element passes when ``|a - b| <= atol + rtol * |b|`` (``b`` the reference), NaN/Inf must appear exactly
where the reference has them, integer and bool outputs must match exactly, and shapes must be equal, so a
dim that conversion froze fails loudly instead of broadcasting quietly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from exporter.errors import InputSpecError, first_line
from exporter.runners import EagerRunner, Runner
from exporter.specs import InputSpec, ShapeCase, make_inputs

__all__ = [
    "DEFAULT_TOLERANCE",
    "CaseResult",
    "GoldenCase",
    "NonFinite",
    "OutputComparison",
    "ParityResult",
    "Tolerance",
    "arbitrate_with_float64",
    "compare_outputs",
    "count_nonfinite",
    "make_golden",
    "nonfinite_summary",
    "verify_runner",
]


@dataclass(frozen=True)
class Tolerance:
    """Float tolerances. The defaults fit float32 kernels that sum in a different order than PyTorch's."""

    atol: float = 1e-4
    rtol: float = 1e-3


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class NonFinite:
    """NaN and Inf counts in one reference output.

    Parity counts NaN/Inf as a match when the backend has them in the same places, so a model that emits
    NaN passes verification; these counts let the report say so, and ``fail_on_nonfinite`` fail on it.
    """

    nan: int
    posinf: int
    neginf: int
    elements: int

    @property
    def inf(self) -> int:
        return self.posinf + self.neginf

    def describe(self) -> str:
        """E.g. ``12 NaN, 3 +Inf``: only the kinds present."""
        counts = ((self.nan, "NaN"), (self.posinf, "+Inf"), (self.neginf, "-Inf"))
        return ", ".join(f"{count} {kind}" for count, kind in counts if count)


def count_nonfinite(array: np.ndarray) -> NonFinite | None:
    """NaN/Inf counts of a float (or complex) array; None when every element is finite or it is integral."""
    array = np.asarray(array)
    if array.dtype.kind not in "fc" or bool(np.isfinite(array).all()):
        return None
    inf = np.isinf(array)
    real = array.real
    return NonFinite(
        nan=int(np.count_nonzero(np.isnan(array))),
        posinf=int(np.count_nonzero(inf & (real > 0))),
        neginf=int(np.count_nonzero(inf & (real < 0))),
        elements=int(array.size),
    )


@dataclass
class GoldenCase:
    """Inputs drawn for one shape case and the reference backend's outputs on them.

    ``nonfinite`` maps each output holding NaN or Inf to its counts (filled by ``make_golden``; empty when
    every output is finite).
    """

    case: ShapeCase
    seed: int
    inputs: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    output_names: list[str]
    nonfinite: dict[str, NonFinite] = field(default_factory=dict)

    @property
    def file_stem(self) -> str:
        return self.case.name


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    reference_shape: list[int]
    max_abs_diff: float | None
    max_rel_diff: float | None
    cosine: float | None
    mismatched: int
    total: int
    nonfinite_mismatch: int
    passed: bool
    message: str | None = None


@dataclass
class CaseResult:
    case: str
    sizes: dict[str, int]
    input_shapes: dict[str, list[int]]
    outputs: list[OutputComparison] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.outputs) and all(o.passed for o in self.outputs)


@dataclass
class ParityResult:
    """One backend judged against the reference at every shape case."""

    backend: str
    artifact: str
    reference: str
    tolerance: Tolerance
    cases: list[CaseResult]
    outputs: list[list[np.ndarray] | None] = field(default_factory=list, repr=False)
    arbitrated: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def numeric_failure(self) -> bool:
        """Failed only on values (every case ran, shapes and NaN/Inf agree): float64 can arbitrate."""
        return (
            not self.passed
            and all(c.error is None for c in self.cases)
            and all(
                o.shape == o.reference_shape and not o.nonfinite_mismatch
                for c in self.cases
                for o in c.outputs
            )
        )

    def failures(self) -> list[str]:
        lines = []
        for case in self.cases:
            if case.error:
                lines.append(f"{case.case}: {case.error}")
            lines.extend(
                f"{case.case}/{o.name}: {o.message or 'outside tolerance'}"
                for o in case.outputs
                if not o.passed
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "artifact": self.artifact,
            "reference": self.reference,
            "tolerance": asdict(self.tolerance),
            "float64_arbitrated": self.arbitrated,
            "passed": self.passed,
            "cases": [{**asdict(c), "passed": c.passed} for c in self.cases],
        }


def make_golden(
    reference: Runner, spec: InputSpec, cases: Sequence[ShapeCase], seed: int
) -> list[GoldenCase]:
    """Draw seeded inputs for every case and record the reference's outputs.

    Raises:
        InputSpecError: the reference model itself fails at a case, so the spec allows sizes the model
            does not; the message names the case and the shapes.
    """
    golden = []
    for index, case in enumerate(cases):
        case_seed = seed + index
        inputs = make_inputs(spec, case.sizes, case_seed)
        try:
            outputs = reference.run(inputs)
        except Exception as error:
            raise InputSpecError(
                f"the PyTorch model fails on inputs drawn from the spec at shape case '{case.name}' "
                f"({case.describe(spec)}): {type(error).__name__}: {first_line(error)}; check --input "
                "names, dtypes and dims, or narrow the dim's range in a recipe"
            ) from error
        if not outputs:
            raise InputSpecError("the PyTorch model returned no tensors; nothing to verify")
        names = list(getattr(reference, "output_names", [])) or [f"output_{i}" for i in range(len(outputs))]
        counts = {name: count_nonfinite(output) for name, output in zip(names, outputs, strict=False)}
        nonfinite = {name: count for name, count in counts.items() if count is not None}
        golden.append(GoldenCase(case, case_seed, inputs, outputs, names, nonfinite))
    return golden


def nonfinite_summary(golden: Sequence[GoldenCase], limit: int = 3) -> str | None:
    """One clause naming every reference output with NaN/Inf and where, or None when all are finite.

    E.g. ``output 'logits': 12 NaN at case export, 30 NaN at case batch-large``; at most ``limit`` cases per
    output are spelled out, so a model that is NaN everywhere still gets a readable line.
    """
    by_output: dict[str, list[str]] = {}
    for item in golden:
        for name, counts in item.nonfinite.items():
            by_output.setdefault(name, []).append(f"{counts.describe()} at case {item.case.name}")
    if not by_output:
        return None
    parts = []
    for name, places in by_output.items():
        more = f", and {len(places) - limit} more cases" if len(places) > limit else ""
        parts.append(f"output '{name}': {', '.join(places[:limit])}{more}")
    return "; ".join(parts)


def verify_runner(
    runner: Runner, golden: Sequence[GoldenCase], tolerance: Tolerance, artifact: str
) -> ParityResult:
    """Run ``runner`` on every golden case and compare output by output (in flattened order)."""
    results = []
    produced: list[list[np.ndarray] | None] = []
    for item in golden:
        result = CaseResult(
            case=item.case.name,
            sizes=dict(item.case.sizes),
            input_shapes={n: list(a.shape) for n, a in item.inputs.items()},
        )
        try:
            outputs = runner.run(item.inputs)
        except Exception as error:
            result.error = f"{runner.name} failed to run: {type(error).__name__}: {first_line(error)}"
            results.append(result)
            produced.append(None)
            continue
        produced.append(outputs)
        if len(outputs) != len(item.outputs):
            result.error = f"{runner.name} returned {len(outputs)} outputs, the reference {len(item.outputs)}"
        for name, expected, actual in zip(item.output_names, item.outputs, outputs, strict=False):
            result.outputs.append(compare_outputs(name, actual, expected, tolerance))
        results.append(result)
    return ParityResult(runner.name, artifact, EagerRunner.name, tolerance, results, produced)


FLOAT64_MULTIPLIER = 2.0


def arbitrate_with_float64(
    result: ParityResult, golden: Sequence[GoldenCase], reference64: Sequence[Sequence[np.ndarray]]
) -> None:
    """Re-judge a backend that missed float32 eager by values alone, against float64 eager.

    An output passes when its RMSE to the float64 result is at most ``FLOAT64_MULTIPLIER`` times eager
    float32's own RMSE to it, plus ``atol / 10`` (the rule of ``torch._dynamo.utils.same``): the backend is
    then as accurate as the reference itself, only rounded differently. Updates ``result`` in place.
    """
    if not result.numeric_failure:
        return
    for case, item, actual, exact in zip(result.cases, golden, result.outputs, reference64, strict=True):
        if actual is None:
            continue
        for comparison, ours, eager32, truth in zip(case.outputs, actual, item.outputs, exact, strict=False):
            if comparison.passed or np.asarray(truth).dtype.kind != "f":
                continue
            ours_error = _rmse(ours, truth)
            eager_error = _rmse(eager32, truth)
            if ours_error <= FLOAT64_MULTIPLIER * eager_error + result.tolerance.atol / 10:
                comparison.passed = True
                comparison.message = (
                    f"outside float32 tolerance, accepted by float64 arbitration: RMSE to float64 "
                    f"{ours_error:.3g} vs eager float32's {eager_error:.3g}"
                )
            else:
                comparison.message = (
                    f"{comparison.message}; float64 arbitration: RMSE to float64 {ours_error:.3g} vs eager "
                    f"float32's {eager_error:.3g}"
                )
    result.arbitrated = True
    result.reference = "pytorch-eager (float64 arbitration)"


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0


def compare_outputs(
    name: str, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance
) -> OutputComparison:
    """Compare one output with the reference; every number is reported, pass/fail uses atol + rtol*|b|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    base: dict[str, Any] = {
        "name": name,
        "shape": list(actual.shape),
        "reference_shape": list(expected.shape),
    }
    if actual.shape != expected.shape:
        return OutputComparison(
            **base,
            max_abs_diff=None,
            max_rel_diff=None,
            cosine=None,
            mismatched=int(expected.size),
            total=int(expected.size),
            nonfinite_mismatch=0,
            passed=False,
            message=f"shape {list(actual.shape)} != reference {list(expected.shape)} (a dim was frozen?)",
        )
    exact = expected.dtype.kind in "biu"
    a = actual.astype(np.float64)
    b = expected.astype(np.float64)
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    same_special = (~finite_b) & ((a == b) | (np.isnan(a) & np.isnan(b)))
    nonfinite_mismatch = int(np.count_nonzero((~finite_a | ~finite_b) & ~same_special))
    both = finite_a & finite_b
    diff = np.abs(np.where(both, a, 0.0) - np.where(both, b, 0.0))
    if exact:  # compared in their own dtype: float64 cannot tell 2**53 from 2**53 + 1
        bad = actual != expected
    else:
        bad = (diff > tolerance.atol + tolerance.rtol * np.abs(np.where(both, b, 0.0))) & both
    mismatched = int(np.count_nonzero(bad)) + nonfinite_mismatch
    rel = np.where(both, diff / np.maximum(np.abs(b), np.finfo(np.float64).tiny), 0.0)
    message = None
    if nonfinite_mismatch:
        message = f"{nonfinite_mismatch} NaN/Inf values differ from the reference"
    elif mismatched:
        message = (
            f"{mismatched}/{expected.size} elements outside atol={tolerance.atol:g} rtol={tolerance.rtol:g}"
        )
    return OutputComparison(
        **base,
        max_abs_diff=float(diff.max(initial=0.0)),
        max_rel_diff=float(rel.max(initial=0.0)),
        cosine=_cosine(np.where(both, a, 0.0), np.where(both, b, 0.0)),
        mismatched=mismatched,
        total=int(expected.size),
        nonfinite_mismatch=nonfinite_mismatch,
        passed=mismatched == 0,
        message=message,
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))
