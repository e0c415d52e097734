"""Verification stage: run a backend on golden inputs and judge each output against the reference.

The judging itself (tolerance, NaN/Inf, cosine, float64 arbitration) lives in ``verify.comparison``, which
the server's start-up check and the int8 budget use too; its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import InputSpecError, UsageError, first_line
from exporter.runners.base import Runner
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec, ShapeCase, make_inputs
from exporter.verify.comparison import (
    DEFAULT_TOLERANCE,
    FLOAT64_MULTIPLIER,
    NonFinite,
    OutputComparison,
    Tolerance,
    compare_outputs,
    count_nonfinite,
    float64_accepts,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "FLOAT64_MULTIPLIER",
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


GOLDEN_INPUTS_CASE = "golden-inputs"


def golden_from_file(reference: Runner, spec: InputSpec, path: Path) -> GoldenCase:
    """``--golden-inputs FILE.npz``: real inputs, one array per input name as the model takes them (batch
    dim included), and the reference's outputs on them; verified on every backend like a drawn case.

    Raises:
        InputSpecError: the file is missing or unreadable, or its arrays do not fit the spec.
    """
    where = f"--golden-inputs '{path}'"
    if not path.exists():
        raise InputSpecError(
            f"{where} does not exist: give an .npz of real inputs (numpy.savez(FILE, name=array))"
        )
    if path.suffix != ".npz" or not path.is_file():
        raise InputSpecError(
            f"{where} is not an .npz file: save real inputs with numpy.savez(FILE, name=array)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:
        raise InputSpecError(f"{where} cannot be read: {first_line(error)}") from None
    sizes: dict[str, int] = {}
    inputs: dict[str, np.ndarray] = {}
    for tensor in spec.tensors:
        if tensor.name not in arrays:
            found = ", ".join(sorted(arrays)) or "nothing"
            raise InputSpecError(f"{where} has no array '{tensor.name}' (it holds {found})")
        array = arrays[tensor.name]
        if array.ndim != len(tensor.dims):
            raise InputSpecError(
                f"{where}: '{tensor.name}' has shape {list(array.shape)}, "
                f"the spec's rank is {len(tensor.dims)}"
            )
        for axis, (size, dim) in enumerate(zip(array.shape, tensor.dims, strict=True)):
            if dim.label is None:
                if size != dim.size:
                    raise InputSpecError(
                        f"{where}: '{tensor.name}' has size {size} at axis {axis}, the spec says {dim.size}"
                    )
                continue
            legal = spec.dim(dim.label)
            if sizes.setdefault(dim.label, size) != size:
                raise InputSpecError(
                    f"{where}: dim '{dim.label}' is {sizes[dim.label]} in one input, {size} in another"
                )
            if not legal.allows(size):
                raise InputSpecError(
                    f"{where}: '{tensor.name}' dim '{dim.label}' is {size}, outside its range {legal}"
                )
        expected = tensor.numpy_dtype
        if array.dtype.kind != expected.kind and not {array.dtype.kind, expected.kind} <= {"i", "u"}:
            raise InputSpecError(f"{where}: '{tensor.name}' is {array.dtype}, the spec says {tensor.dtype}")
        inputs[tensor.name] = np.ascontiguousarray(array.astype(expected, copy=False))
    conflict = spec.derived_conflict(sizes)
    if conflict:
        raise InputSpecError(f"{where}: {conflict}, as the input spec says; fix the arrays' shapes")
    case = ShapeCase(GOLDEN_INPUTS_CASE, sizes)
    outputs = _reference_outputs(reference, inputs, where, "")
    return _golden_case(reference, case, 0, inputs, outputs)


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
        where = f"inputs drawn from the spec at shape case '{case.name}' ({case.describe(spec)})"
        advice = "; check --input names, dtypes and dims, or narrow the dim's range in a recipe"
        outputs = _reference_outputs(reference, inputs, where, advice)
        golden.append(_golden_case(reference, case, case_seed, inputs, outputs))
    return golden


def _reference_outputs(
    reference: Runner, inputs: dict[str, np.ndarray], where: str, advice: str
) -> list[np.ndarray]:
    """The reference's outputs on golden inputs; its failure, or no tensors at all, is the user's input."""
    try:
        outputs = reference.run(inputs)
    except UsageError:
        raise  # --output-names that do not fit the model's outputs
    except Exception as error:
        raise InputSpecError(
            f"the PyTorch model fails on {where}: {type(error).__name__}: {first_line(error)}{advice}"
        ) from error
    if not outputs:
        raise InputSpecError("the PyTorch model returned no tensors; nothing to verify")
    return outputs


def _golden_case(
    reference: Runner, case: ShapeCase, seed: int, inputs: dict[str, np.ndarray], outputs: list[np.ndarray]
) -> GoldenCase:
    """A golden case from the reference's outputs, named as the reference names them, NaN/Inf counted."""
    names = list(getattr(reference, "output_names", [])) or [f"output_{i}" for i in range(len(outputs))]
    counts = {name: count_nonfinite(output) for name, output in zip(names, outputs, strict=False)}
    nonfinite = {name: count for name, count in counts.items() if count is not None}
    return GoldenCase(case, seed, inputs, outputs, names, nonfinite)


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
            accepted, ours_error, eager_error = float64_accepts(ours, eager32, truth, result.tolerance.atol)
            if accepted:
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
