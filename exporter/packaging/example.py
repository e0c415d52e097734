"""The bundle's ``example_request.json``: a real input when the artifacts folder keeps one.

Spec-drawn golden inputs (uniform over a range, or N(0, 1)) prove the server answers, but show a reader
nothing of what the model takes. So the example is, first found:

1. the ``golden-inputs`` case: real inputs given with ``--golden-inputs``, their expected outputs beside them;
2. the first kept int8 evaluation sample, when the lossy model was judged on real data (held-out inputs;
   no outputs are kept for them);
3. the golden ``export`` case (inputs drawn from the spec, said so);
4. valid values at the example shape, when the folder has no golden case at all.

A real case over ``EXAMPLE_MAX_VALUES`` values is cut to its first rows along the batch dim; one that cannot
be cut that small gives way to the next source.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.documents.manifest import GoldenCaseEntry, GoldenSamplesEntry, Manifest, TensorEntry
from exporter.gate.files import folder_file, lossy_entries
from exporter.serving.artifact import golden_cases
from exporter.serving.protocol import DATATYPE_OF
from exporter.verify.parity import GOLDEN_INPUTS_CASE

__all__ = ["EXAMPLE_MAX_VALUES", "Example", "example_request", "example_values"]

EXAMPLE_MAX_VALUES = 65_536
"""Input values example_request.json carries at most (about 1 MB of JSON)."""

_INT8_EVAL = "int8-eval"


@dataclass(frozen=True)
class Example:
    """The request body, where its values come from, and what answers it."""

    request: dict[str, Any]
    """A KServe v2 inference request: ``id`` and ``inputs``."""
    origin: str
    """What the values are, for the bundle's README."""
    expected: str | None = None
    """The golden outputs file (under ``artifacts/``) that answers the request; None when none is kept."""
    rows: int | None = None
    """When the case was cut: how many leading rows of ``expected`` answer the request."""

    @property
    def id(self) -> str:
        return str(self.request["id"])


def example_request(folder: Path, manifest: Manifest) -> Example:
    """The example for ``folder``'s bundle: the first real input found, else the golden export case."""
    cases = {case.case: case for case in golden_cases(manifest)}
    if GOLDEN_INPUTS_CASE in cases:
        origin = f"real inputs, the golden `{GOLDEN_INPUTS_CASE}` case given with --golden-inputs"
        example = _from_case(folder, manifest, cases[GOLDEN_INPUTS_CASE], origin)
        if example is not None:
            return example
    example = _from_real_samples(folder, manifest)
    if example is not None:
        return example
    case = cases.get("export") or next(iter(cases.values()), None)
    if case is not None:
        origin = f"the golden `{case.case}` case, whose inputs are drawn from the input spec, not real data"
        example = _from_case(folder, manifest, case, origin, cap=False)
        if example is not None:
            return example
    tensors = []
    for tensor in manifest.input_spec.inputs:
        shape, data = example_values(tensor)
        datatype = DATATYPE_OF[tensor.dtype]
        tensors.append({"name": tensor.name, "shape": shape, "datatype": datatype, "data": data})
    origin = "valid values at the example shape, since the folder keeps no golden case"
    return Example({"id": "example", "inputs": tensors}, origin)


def example_values(tensor: TensorEntry) -> tuple[list[int], list[Any]]:
    """A valid request tensor at the example shape: every value the low end of the input's range."""
    shape = list(tensor.example_shape)
    dtype = np.dtype(tensor.dtype)
    low = tensor.range[0] if tensor.range else 0
    value: Any = False if dtype.kind == "b" else (int(low) if dtype.kind in "iu" else float(low))
    return shape, [value] * math.prod(shape)


def _from_case(
    folder: Path, manifest: Manifest, case: GoldenCaseEntry, origin: str, *, cap: bool = True
) -> Example | None:
    with np.load(folder_file(folder, case.inputs), allow_pickle=False) as data:  # lazily: one case's arrays
        arrays = {tensor.name: data[tensor.name] for tensor in manifest.input_spec.inputs}
    rows = _rows_within_cap(manifest, arrays) if cap else None
    if rows == 0:
        return None
    request = _request(case.case, manifest, arrays, rows)
    if rows is not None:
        origin += f", cut to its first {rows} rows along the batch dim"
    return Example(request, origin, case.outputs, rows)


def _from_real_samples(folder: Path, manifest: Manifest) -> Example | None:
    """The first kept int8 evaluation sample, when a lossy model was judged on real data."""
    entry = next(
        (g for g in manifest.golden if isinstance(g, GoldenSamplesEntry) and g.case == _INT8_EVAL), None
    )
    if entry is None or entry.samples == 0:
        return None
    if not any(lossy.judged_on == "real" for lossy in lossy_entries(manifest)):
        return None
    with np.load(folder_file(folder, entry.inputs), allow_pickle=False) as data:  # sample 0 only
        arrays = {tensor.name: data[f"{tensor.name}.0"] for tensor in manifest.input_spec.inputs}
    rows = _rows_within_cap(manifest, arrays)
    if rows == 0:
        return None
    head, colon, tail = entry.source.partition(":")  # the bundle keeps no local paths: a file name at most
    source = f"{Path(head).name}{colon}{tail}"
    origin = f"the first held-out real sample the int8 model was judged on, from {source}"
    return Example(_request(f"{_INT8_EVAL}-0", manifest, arrays, rows), origin)


def _rows_within_cap(manifest: Manifest, arrays: Mapping[str, np.ndarray]) -> int | None:
    """None: the arrays fit as they are; else the leading batch rows that fit (0: none can be cut to fit)."""
    total = sum(array.size for array in arrays.values())
    if total <= EXAMPLE_MAX_VALUES:
        return None
    batched = _batched(manifest)
    cut = {name: array for name, array in arrays.items() if name in batched and array.ndim and len(array)}
    fixed = total - sum(array.size for array in cut.values())
    per_row = sum(array.size // len(array) for array in cut.values())
    if not cut or per_row == 0 or fixed + per_row > EXAMPLE_MAX_VALUES:
        return 0
    return min(*(len(a) for a in cut.values()), (EXAMPLE_MAX_VALUES - fixed) // per_row)


def _batched(manifest: Manifest) -> set[str]:
    """The inputs that lead with the batch dim (the benchmark's, else the first input's leading label)."""
    inputs = manifest.input_spec.inputs
    label = manifest.benchmark.batch_dim if manifest.benchmark is not None else None
    if label is None and inputs and inputs[0].shape and isinstance(inputs[0].shape[0], str):
        label = inputs[0].shape[0]
    return {t.name for t in inputs if label is not None and t.shape and t.shape[0] == label}


def _request(
    case: str, manifest: Manifest, arrays: Mapping[str, np.ndarray], rows: int | None
) -> dict[str, Any]:
    batched = _batched(manifest) if rows is not None else set()
    tensors = []
    for tensor in manifest.input_spec.inputs:
        array = arrays[tensor.name]
        if tensor.name in batched:
            array = array[:rows]
        tensors.append(
            {
                "name": tensor.name,
                "shape": list(array.shape),
                "datatype": DATATYPE_OF[array.dtype.name],
                "data": array.reshape(-1).tolist(),
            }
        )
    return {"id": case, "inputs": tensors}
