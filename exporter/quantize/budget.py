"""Int8 parity budget: how far a quantized model's outputs may move from the float model's.

Float tolerances (``atol + rtol*|b|``) cannot hold for int8, so an int8 candidate is judged per output by
the minimum cosine similarity over samples, the signal-to-quantization-noise ratio (SQNR, dB) and, for
2-D outputs declared class scores, top-1 agreement. Only cosine is gated by default; SQNR and max abs diff are
gated when a threshold is given. A threshold for top-1 (``--min-top1``) is also what declares the 2-D outputs
class scores: without it top-1 is not even measured, since a 2-D output may as well be an embedding, whose
argmax means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import dataclasses as pydantic_dataclasses

from exporter.documents.fields import ENTRY, Number
from exporter.verify.comparison import cosine_rows, rows, sqnr_db, top1_agreement

__all__ = ["Int8Comparison", "ParityBudget", "compare_int8"]


@pydantic_dataclasses.dataclass(frozen=True, config=ENTRY)
class ParityBudget:
    """The int8 parity budget. Default: cosine >= 0.99 on every sample of every output; other thresholds are
    opt-in. The manifest's lossy entries hold this type (``exporter verify`` and serve re-check with it)."""

    min_cosine: Number = 0.99
    min_top1: Number | None = None
    min_sqnr_db: Number | None = None
    max_abs: Number | None = None

    def describe(self) -> str:
        parts = [f"cosine >= {self.min_cosine:g}"]
        if self.min_top1 is not None:
            parts.append(f"top-1 agreement >= {self.min_top1:g} (2-D outputs)")
        if self.min_sqnr_db is not None:
            parts.append(f"SQNR >= {self.min_sqnr_db:g} dB")
        if self.max_abs is not None:
            parts.append(f"max abs diff <= {self.max_abs:g}")
        return ", ".join(parts)


@dataclass
class Int8Comparison:
    """One output of an int8 candidate against the float reference, over all evaluation samples."""

    name: str
    samples: int
    min_cosine: float
    sqnr_db: float
    max_abs_diff: float
    top1_agreement: float | None
    passed: bool
    message: str | None = None


def compare_int8(
    name: str, actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], budget: ParityBudget
) -> Int8Comparison:
    """Compare per-sample outputs (each with its batch dim) of the candidate and the float reference."""
    if len(actual) != len(expected) or any(
        a.shape != b.shape for a, b in zip(actual, expected, strict=False)
    ):
        return Int8Comparison(
            name, len(expected), 0.0, -math.inf, math.inf, None, False, "output shapes differ"
        )
    rows_a = np.concatenate([rows(a) for a in actual]).astype(np.float64)
    rows_b = np.concatenate([rows(b) for b in expected]).astype(np.float64)
    if not np.all(np.isfinite(rows_a)):
        return Int8Comparison(
            name, len(expected), 0.0, -math.inf, math.inf, None, False, "NaN/Inf in the output"
        )
    sqnr = sqnr_db(rows_b, rows_a)
    min_cosine = float(cosine_rows(rows_a, rows_b).min())
    max_abs = float(np.abs(rows_a - rows_b).max(initial=0.0))
    classifier = (  # (B, C) scores, as --min-top1 declares them
        budget.min_top1 is not None
        and expected[0].ndim == 2
        and expected[0].shape[1] >= 2
        and expected[0].dtype.kind == "f"
    )
    top1 = top1_agreement(rows_a, rows_b) if classifier else None
    misses = []
    if min_cosine < budget.min_cosine:
        misses.append(f"min cosine {min_cosine:.4f} < {budget.min_cosine:g}")
    if top1 is not None and budget.min_top1 is not None and top1 < budget.min_top1:
        misses.append(f"top-1 agreement {top1:.3f} < {budget.min_top1:g}")
    if budget.min_sqnr_db is not None and sqnr < budget.min_sqnr_db:
        misses.append(f"SQNR {sqnr:.1f} dB < {budget.min_sqnr_db:g}")
    if budget.max_abs is not None and max_abs > budget.max_abs:
        misses.append(f"max abs {max_abs:.3g} > {budget.max_abs:g}")
    return Int8Comparison(
        name, len(expected), min_cosine, sqnr, max_abs, top1, not misses, "; ".join(misses) or None
    )
