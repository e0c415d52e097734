"""How an output is judged against its reference: one implementation for ``verify``, the int8 parity
budget and the server's start-up check.

No torch and no runner: numpy, and pydantic for ``Tolerance`` (the manifest's own type), so the server and
a bundle import it. The rules:

- An element passes when ``|a - b| <= atol + rtol * |b|`` (``b`` the reference); integer and bool outputs
  must match exactly; shapes must be equal, so a dim that conversion froze fails loudly.
- NaN must appear exactly where the reference has NaN, and +Inf/-Inf exactly where it has the same
  infinity. A model that emits NaN therefore passes when the backend emits the same NaN.
- Cosine similarity is taken per sample (row of the leading axis) over the finite positions. Two all-zero
  rows are identical (cosine 1.0); an all-zero row against a non-zero one is cosine 0.0 (nothing of the
  reference's direction survived), never a free pass.
- SQNR (dB) is the reference's energy over the error's: +Inf for an exact copy, -Inf against an all-zero
  reference. Top-1 agreement is the share of rows whose argmax matches (classifier scores).
- Float64 arbitration: an output that missed float32 eager passes when its RMSE to float64 eager is at most
  ``FLOAT64_MULTIPLIER`` times eager float32's own, plus ``atol / 10`` (``torch._dynamo.utils.same``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import dataclasses as pydantic_dataclasses

from exporter.documents.fields import ENTRY, Number

__all__ = [
    "DEFAULT_TOLERANCE",
    "FLOAT64_MULTIPLIER",
    "NonFinite",
    "OutputComparison",
    "Tolerance",
    "compare_outputs",
    "cosine",
    "cosine_rows",
    "count_nonfinite",
    "float64_accepts",
    "min_row_cosine",
    "rmse",
    "rows",
    "sqnr_db",
    "top1_agreement",
]


@pydantic_dataclasses.dataclass(frozen=True, config=ENTRY)
class Tolerance:
    """Float tolerances: an element passes when ``|a - b| <= atol + rtol * |b|``. The defaults fit float32
    kernels that sum in a different order than PyTorch's. manifest.json and report.json hold this type."""

    atol: Number = 1e-4
    rtol: Number = 1e-3


DEFAULT_TOLERANCE = Tolerance()

FLOAT64_MULTIPLIER = 2.0


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
        cosine=cosine(np.where(both, a, 0.0), np.where(both, b, 0.0)),
        mismatched=mismatched,
        total=int(expected.size),
        nonfinite_mismatch=nonfinite_mismatch,
        passed=mismatched == 0,
        message=message,
    )


def rows(array: np.ndarray) -> np.ndarray:
    """One row per sample (first axis), or the whole array as one row when it has no batch dim."""
    array = np.asarray(array)
    if array.ndim <= 1:
        return array.reshape(1, -1)
    return array.reshape(array.shape[0], -1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair of two (N, D) arrays: 1.0 for two all-zero rows, 0.0 for an
    all-zero row against a non-zero one."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    norms = norm_a * norm_b
    dots = np.einsum("ij,ij->i", a, b)
    both_zero = (norm_a == 0) & (norm_b == 0)
    return np.where(both_zero, 1.0, np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays taken whole (one row), with ``cosine_rows``' zero conventions."""
    return float(cosine_rows(np.asarray(a).reshape(1, -1), np.asarray(b).reshape(1, -1))[0])


def min_row_cosine(actual: np.ndarray, reference: np.ndarray) -> float:
    """The smallest per-sample cosine, NaN/Inf positions (of either) counted as zero on both sides: the
    caller checks that they agree first (``compare_outputs``' ``nonfinite_mismatch``)."""
    a, r = rows(actual).astype(np.float64), rows(reference).astype(np.float64)
    both = np.isfinite(a) & np.isfinite(r)
    return float(cosine_rows(np.where(both, a, 0.0), np.where(both, r, 0.0)).min(initial=1.0))


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB over all elements (the shapes must match)."""
    ref, act = np.asarray(reference, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    noise = float(np.sum((ref - act) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def top1_agreement(actual: np.ndarray, reference: np.ndarray) -> float:
    """The share of rows (``rows``) whose largest value sits at the same position in both arrays."""
    a, r = rows(actual), rows(reference)
    return float(np.mean(a.argmax(axis=1) == r.argmax(axis=1))) if len(r) else 1.0


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0


def float64_accepts(
    ours: np.ndarray, eager32: np.ndarray, truth: np.ndarray, atol: float
) -> tuple[bool, float, float]:
    """Whether float64 arbitration accepts ``ours``: (accepted, our RMSE to float64, eager float32's)."""
    ours_error, eager_error = rmse(ours, truth), rmse(eager32, truth)
    return ours_error <= FLOAT64_MULTIPLIER * eager_error + atol / 10, ours_error, eager_error
