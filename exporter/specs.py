"""Input specs: what the model is fed, which dims may change, and how example data is drawn.

The command-line form is ``NAME:DTYPE:DIMS[:LOW..HIGH]``. DIMS are comma-separated; each is an integer (a
static dim) or ``label=size`` (a dynamic dim and its example size). The same label in two inputs names the
same dim. Numbers are drawn from ``[LOW, HIGH)`` when a range is given (integers) or uniformly (floats);
without a range floats are standard normal and integers are drawn from ``[0, 10)``.

Only ASCII is legal: ``int()`` and ``float()`` would read full-width or Arabic-Indic digits as numbers, so a
spec pasted from a rich-text document could silently mean something else. Ranges must fit the dtype (and,
for floats, ``HIGH - LOW`` must be finite, or uniform draws overflow). Tensors are capped in size (see
``MAX_ELEMENTS`` and ``memory_limit``) at the example shape and at the largest shape the verifier draws, so
an example size that cannot be drawn is a usage error up front rather than a ``MemoryError`` mid-run.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from exporter._spec_parser import DTYPES, parse_fields
from exporter._spec_parser import show as _show
from exporter.errors import InputSpecError

__all__ = [
    "DTYPES",
    "MAX_ELEMENTS",
    "DimSpec",
    "DynamicDim",
    "InputSpec",
    "ShapeCase",
    "TensorSpec",
    "make_inputs",
    "memory_limit",
    "parse_tensor_spec",
    "shape_cases",
    "trace_sizes",
]

_DEFAULT_INT_RANGE = (0, 10)

MAX_ELEMENTS = 2**31
"""Most elements one input may have at any shape drawn: ONNX Runtime and many kernels index with 32 bits,
and drawing more would take minutes. ``memory_limit()`` caps the bytes as well."""


@functools.cache
def memory_limit() -> int | None:
    """Most bytes one input may take: a quarter of physical RAM, so the model, its outputs and the float64
    draws behind each input still fit beside it. None when the platform does not report its RAM."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    return total // 4 if total > 0 else None


@dataclass(frozen=True)
class DimSpec:
    """One dimension: its example size and, when dynamic, the label shared by every input using it."""

    size: int
    label: str | None = None

    @property
    def dynamic(self) -> bool:
        return self.label is not None

    def __str__(self) -> str:
        return f"{self.label}={self.size}" if self.label else str(self.size)


@dataclass(frozen=True)
class DynamicDim:
    """Legal sizes of a dynamic dim (``max`` None means unbounded)."""

    label: str
    min: int = 1
    max: int | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, dtype, dims and the value range to draw from."""

    name: str
    dtype: str
    dims: tuple[DimSpec, ...]
    low: float | None = None
    high: float | None = None

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.numpy_dtype.kind == "f"

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape with each dynamic dim at ``sizes[label]``."""
        return tuple(sizes[d.label] if d.label else d.size for d in self.dims)

    def __str__(self) -> str:
        text = f"{self.name}:{self.dtype}:{','.join(str(d) for d in self.dims)}"
        if self.low is not None and self.high is not None:
            text += f":{_number(self.low)}..{_number(self.high)}"
        return text


@dataclass(frozen=True)
class ShapeCase:
    """A set of dynamic-dim sizes to verify at, with a short human name (``export``, ``min``, ...)."""

    name: str
    sizes: dict[str, int]

    def describe(self, spec: InputSpec) -> str:
        return " ".join(f"{t.name}={list(t.shape(self.sizes))}" for t in spec.tensors)


@dataclass(frozen=True)
class InputSpec:
    """Every input of the model, in the order they are passed, plus the legal range of each dynamic dim.

    Each input must fit ``MAX_ELEMENTS`` (2**31 elements) and ``memory_limit()`` (a quarter of RAM) at the
    largest shape ``shape_cases`` draws (the ``large`` case, about twice the example), else InputSpecError.
    """

    tensors: tuple[TensorSpec, ...]
    dynamic_dims: tuple[DynamicDim, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.tensors:
            raise InputSpecError(
                "no inputs given: pass --input NAME:DTYPE:DIMS (see `exporter export --help`)"
            )
        names = [t.name for t in self.tensors]
        for name in names:
            if names.count(name) > 1:
                raise InputSpecError(f"input '{name}' is given twice; each --input needs its own name")
        sizes: dict[str, int] = {}
        for tensor in self.tensors:
            for dim in tensor.dims:
                if dim.label is None:
                    continue
                seen = sizes.setdefault(dim.label, dim.size)
                if seen != dim.size:
                    raise InputSpecError(
                        f"input '{tensor.name}': dim '{dim.label}' has example size {dim.size} here but "
                        f"{seen} in another input; a shared label must have one size"
                    )
        known = {d.label for d in self.dynamic_dims}
        for label in sizes:
            if label not in known:
                object.__setattr__(self, "dynamic_dims", (*self.dynamic_dims, DynamicDim(label)))
        for dyn in self.dynamic_dims:
            if dyn.label not in sizes:
                raise InputSpecError(f"dim '{dyn.label}' has a range but no input uses it")
            size = sizes[dyn.label]
            if dyn.min < 0 or (dyn.max is not None and dyn.max < dyn.min):
                raise InputSpecError(f"dim '{dyn.label}': bad range min={dyn.min} max={dyn.max}")
            if size < dyn.min or (dyn.max is not None and size > dyn.max):
                raise InputSpecError(
                    f"dim '{dyn.label}': example size {size} is outside its range [{dyn.min}, {dyn.max}]"
                )
        cases = shape_cases(self)
        for tensor in self.tensors:
            largest = max(cases, key=lambda c: math.prod(tensor.shape(c.sizes)))
            where = "at the example size"
            if largest.name not in ("export", "values"):
                where = f"at verification case '{largest.name}' (up to about twice the example size)"
            _check_size(tensor, tensor.shape(largest.sizes), where, f"input '{tensor.name}'")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def example_sizes(self) -> dict[str, int]:
        return {d.label: d.size for t in self.tensors for d in t.dims if d.label is not None}

    def dim(self, label: str) -> DynamicDim:
        return next(d for d in self.dynamic_dims if d.label == label)

    def with_overrides(self, tensors: Iterable[TensorSpec]) -> InputSpec:
        """This spec with the given tensors replacing (by name) or appended to its own."""
        by_name = {t.name: t for t in self.tensors}
        for tensor in tensors:
            by_name[tensor.name] = tensor
        used = {d.label for t in by_name.values() for d in t.dims if d.label}
        return InputSpec(tuple(by_name.values()), tuple(d for d in self.dynamic_dims if d.label in used))

    def to_json(self) -> dict[str, object]:
        return {
            "inputs": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": [d.label or d.size for d in t.dims],
                    "example_shape": list(t.shape(self.example_sizes)),
                    "range": None if t.low is None else [t.low, t.high],
                    "spec": str(t),
                }
                for t in self.tensors
            ],
            "dynamic_dims": {
                d.label: {"min": d.min, "max": d.max, "example": self.example_sizes[d.label]}
                for d in self.dynamic_dims
            },
        }


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def _check_size(tensor: TensorSpec, shape: tuple[int, ...], where: str, who: str) -> None:
    """Refuse a tensor over ``MAX_ELEMENTS`` or ``memory_limit()`` bytes at ``shape``."""
    elements = math.prod(shape)
    size = elements * tensor.numpy_dtype.itemsize
    limit = memory_limit()
    if elements <= MAX_ELEMENTS and (limit is None or size <= limit):
        return
    caps = f"{MAX_ELEMENTS} elements" + (f" and {limit / 1e9:.1f} GB (a quarter of RAM)" if limit else "")
    fix = (
        "use a smaller example size; the dynamic dim's range can still be large"
        if any(d.dynamic for d in tensor.dims)
        else "use smaller dims"
    )
    shown = _show(str(list(shape)))
    raise InputSpecError(
        f"{who}: shape {shown} {where} is {elements:.3g} elements, {size / 1e9:.3g} GB as {tensor.dtype}, "
        f"over the limit of {caps}: {fix}"
    )


def parse_tensor_spec(text: str) -> TensorSpec:
    """Parse ``NAME:DTYPE:DIMS[:LOW..HIGH]``; errors name the field that is wrong."""
    where = f"bad input spec '{_show(text)}'"
    fields = parse_fields(text, where)
    dims = tuple(DimSpec(size, label) for size, label in fields.dims)
    tensor = TensorSpec(fields.name, fields.dtype, dims, fields.low, fields.high)
    example = tuple(d.size for d in dims)
    _check_size(tensor, example, "at the example size", where)
    return tensor


def larger_size(dim: DynamicDim, example: int) -> int | None:
    """A size above the example, odd so that even-only assumptions show; None when the range forbids it."""
    size = 2 * example + 1
    if dim.max is not None:
        size = min(size, dim.max)
    return size if size > example else None


def shape_cases(spec: InputSpec) -> list[ShapeCase]:
    """Sizes to verify at: the export shape, the export shape again with other values, every dynamic dim at
    its minimum, one above the example, about twice the example, then each dim moved alone. A dim that
    conversion froze fails at least one of them; a branch a trace froze on values fails ``values``."""
    example = spec.example_sizes
    cases = [ShapeCase("export", dict(example)), ShapeCase("values", dict(example))]
    if not spec.dynamic_dims:
        return cases
    smallest = {d.label: d.min for d in spec.dynamic_dims}
    larger = {d.label: larger_size(d, example[d.label]) or example[d.label] for d in spec.dynamic_dims}
    following = {
        d.label: example[d.label] + 1 if d.max is None or example[d.label] < d.max else example[d.label]
        for d in spec.dynamic_dims
    }
    candidates = [ShapeCase("min", smallest), ShapeCase("next", following), ShapeCase("large", larger)]
    if len(spec.dynamic_dims) > 1:
        for dim in spec.dynamic_dims:
            for label, sizes in (("min", smallest), ("large", larger)):
                candidates.append(ShapeCase(f"{dim.label}-{label}", {**example, dim.label: sizes[dim.label]}))
    for case in candidates:
        if all(case.sizes != seen.sizes for seen in cases):
            cases.append(case)
    return cases


def trace_sizes(spec: InputSpec) -> dict[str, int]:
    """Dynamic-dim sizes to trace at: torch.export specializes sizes 0 and 1, so at least 2 where legal."""
    return {
        d.label: max(2, spec.example_sizes[d.label]) if d.max is None or d.max >= 2 else d.max
        for d in spec.dynamic_dims
    }


def make_inputs(spec: InputSpec, sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Draw one example of every input at ``sizes`` from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for tensor in spec.tensors:
        shape = tensor.shape(sizes)
        dtype = tensor.numpy_dtype
        if dtype.kind == "b":
            arrays[tensor.name] = np.asarray(rng.random(shape) < 0.5)
        elif dtype.kind in "iu":
            low, high = _DEFAULT_INT_RANGE
            if tensor.low is not None and tensor.high is not None:
                low, high = int(tensor.low), int(tensor.high)
            arrays[tensor.name] = rng.integers(low, high, size=shape, dtype=dtype)
        elif tensor.low is not None and tensor.high is not None:
            arrays[tensor.name] = rng.uniform(tensor.low, tensor.high, size=shape).astype(dtype)
        else:
            arrays[tensor.name] = rng.standard_normal(shape).astype(dtype)
    return arrays
