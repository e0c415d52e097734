"""The model's signature as a server sees it: inputs (dtype, dims, ranges, whether NaN/Inf were verified)
and outputs, read from the manifest and the golden cases; and the request body limit it implies.

Split from ``exporter.serving.protocol`` (which re-exports these names). Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.documents.manifest import GoldenCaseEntry, Manifest

__all__ = [
    "DATATYPE_OF",
    "InputRule",
    "ModelSignature",
    "OutputInfo",
    "default_body_limit",
    "largest_valid_elements",
    "signature_of",
]

DATATYPE_OF = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
"""numpy dtype name -> the protocol's datatype name."""


@dataclass(frozen=True)
class InputRule:
    """One input as the manifest declares it: what a request must send for it."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str, ...]
    allow_nonfinite: bool
    value_range: tuple[int, int] | None
    """``[low, high)`` of an integer input (token ids, class indices): the values it was verified with."""

    @property
    def datatype(self) -> str:
        return DATATYPE_OF[self.dtype.name]

    def metadata_shape(self) -> list[int]:
        return [-1 if isinstance(d, str) else d for d in self.dims]


@dataclass(frozen=True)
class OutputInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    """-1 for a dim that varies between the golden cases (a dynamic dim)."""

    @property
    def datatype(self) -> str:
        return DATATYPE_OF.get(self.dtype.name, "BYTES")


@dataclass(frozen=True)
class ModelSignature:
    name: str
    inputs: tuple[InputRule, ...]
    outputs: tuple[OutputInfo, ...]
    dim_ranges: dict[str, tuple[int, int | None]]
    batch_dim: str | None
    """The dim label requests are batched along, when it is the first axis of every input and output."""
    dim_multiples: dict[str, int] = field(default_factory=dict)
    """Dims whose legal sizes are multiples of a number above 1 (``h=64..512%4``): that number."""
    derived_dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Dims whose size is the sum of other dims' sizes (``total=past+seq``)."""

    def input(self, name: str) -> InputRule | None:
        return next((rule for rule in self.inputs if rule.name == name), None)

    def metadata(self, platform: str) -> dict[str, Any]:
        """``GET /v2/models/{name}``: inputs and outputs with datatype and shape, -1 for dynamic dims."""
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": platform,
            "inputs": [
                {"name": r.name, "datatype": r.datatype, "shape": r.metadata_shape()} for r in self.inputs
            ],
            "outputs": [
                {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in self.outputs
            ],
        }


def signature_of(folder: Path, manifest: Manifest) -> ModelSignature:
    """The signature from the manifest's input spec and the golden cases (outputs' dtypes and shapes).

    An input may carry NaN/Inf only when a golden case fed it some: the model was not verified otherwise.
    """
    cases = [entry for entry in manifest.golden if isinstance(entry, GoldenCaseEntry)]
    golden_inputs = [_load_npz(folder / case.inputs) for case in cases]
    golden_outputs = [_load_npz(folder / case.outputs) for case in cases]
    rules = []
    for tensor in manifest.input_spec.inputs:
        dtype = np.dtype(tensor.dtype)
        nonfinite = dtype.kind == "f" and any(
            not np.isfinite(arrays[tensor.name]).all() for arrays in golden_inputs if tensor.name in arrays
        )
        value_range = None
        if tensor.range is not None and dtype.kind in "iu":
            value_range = (int(tensor.range[0]), int(tensor.range[1]))
        rules.append(InputRule(tensor.name, dtype, tuple(tensor.shape), nonfinite, value_range))
    names = manifest.output_names or (cases[0].output_names if cases else [])
    outputs = []
    for name in names:
        arrays = [arrays[name] for arrays in golden_outputs if name in arrays]
        if not arrays:
            outputs.append(OutputInfo(name, np.dtype("float32"), ()))
            continue
        ranks = {a.ndim for a in arrays}
        shape = arrays[0].shape if len(ranks) == 1 else ()
        dims = tuple(
            -1 if len({a.shape[axis] for a in arrays}) > 1 else size for axis, size in enumerate(shape)
        )
        outputs.append(OutputInfo(name, arrays[0].dtype, dims))
    ranges = {label: (d.min, d.max) for label, d in manifest.input_spec.dynamic_dims.items()}
    derived = {label: tuple(parts) for label, parts in manifest.input_spec.derived_dims.items()}
    for label, parts in derived.items():
        lows = [ranges.get(p, (1, None))[0] for p in parts]
        highs = [ranges.get(p, (1, None))[1] for p in parts]
        ranges[label] = (sum(lows), None if None in highs else sum(h or 0 for h in highs))
    batch = manifest.benchmark.batch_dim if manifest.benchmark else None
    if batch is not None and not _batch_leads(batch, rules, cases, golden_outputs, names):
        batch = None
    multiples = {
        label: d.multiple_of for label, d in manifest.input_spec.dynamic_dims.items() if d.multiple_of > 1
    }
    return ModelSignature(manifest.name, tuple(rules), tuple(outputs), ranges, batch, multiples, derived)


def _batch_leads(
    batch: str,
    rules: Sequence[InputRule],
    cases: Sequence[GoldenCaseEntry],
    golden_outputs: Sequence[Mapping[str, np.ndarray]],
    names: Sequence[str],
) -> bool:
    """True when ``batch`` is axis 0 of every input and, in every golden case, of every output."""
    if not rules or any(not r.dims or r.dims[0] != batch for r in rules):
        return False
    for case, outputs in zip(cases, golden_outputs, strict=True):
        size = case.sizes.get(batch)
        if size is None:
            return False
        for name in names:
            array = outputs.get(name)
            if array is None or array.ndim == 0 or array.shape[0] != size:
                return False
    return True


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


BODY_FLOOR_BYTES = 1 << 20
"""The smallest default body limit: room for a generously formatted small request."""
BODY_UNBOUNDED_BYTES = 64 << 20
"""The default body limit when some input dim has no declared maximum (the largest input is unknown)."""
BODY_HEAD_BYTES = 64 << 10
"""Room for the JSON around the data: names, shapes, parameters, an id."""
JSON_BYTES_PER_VALUE = {"b": 8, "i": 24, "u": 24, "f": 32}
"""Bytes one value takes in a request's JSON at most, as clients write it: ``-1.1754943508222875e-38, ``
is 25 (a float32 read as a double), ``-9223372036854775808, `` 22, ``false, `` 7, with room for a newline."""


def largest_valid_elements(signature: ModelSignature) -> dict[str, int] | None:
    """Elements per input at every dim's declared maximum; None when some dynamic dim has no maximum."""
    counts = {}
    for rule in signature.inputs:
        sizes = []
        for dim in rule.dims:
            high = dim if isinstance(dim, int) else signature.dim_ranges.get(dim, (1, None))[1]
            if high is None:
                return None
            sizes.append(high)
        counts[rule.name] = math.prod(sizes)
    return counts


def default_body_limit(signature: ModelSignature) -> int:
    """The request body limit implied by the model's largest valid input: every input at its declared
    maximum dims, written as JSON (``JSON_BYTES_PER_VALUE``), plus ``BODY_HEAD_BYTES``; at least
    ``BODY_FLOOR_BYTES``, and ``BODY_UNBOUNDED_BYTES`` when a dynamic dim has no maximum.

    A larger body cannot be a valid request, so reading (and parsing) it is wasted memory and CPU.
    """
    counts = largest_valid_elements(signature)
    if counts is None:
        return BODY_UNBOUNDED_BYTES
    total = BODY_HEAD_BYTES + sum(
        counts[rule.name] * JSON_BYTES_PER_VALUE.get(rule.dtype.kind, 32) for rule in signature.inputs
    )
    return max(BODY_FLOOR_BYTES, total)
