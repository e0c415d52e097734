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
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

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

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "float64": np.dtype(np.float64),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
_DTYPE_ALIASES = {
    "float": "float32",
    "fp32": "float32",
    "f32": "float32",
    "half": "float16",
    "fp16": "float16",
    "f16": "float16",
    "double": "float64",
    "fp64": "float64",
    "f64": "float64",
    "long": "int64",
    "i64": "int64",
    "int": "int32",
    "i32": "int32",
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE = {"inf", "infinity", "nan"}
_DEFAULT_INT_RANGE = (0, 10)
_FIELDS = ("NAME", "DTYPE", "DIMS", "LOW..HIGH")
_SHOWN_CHARS = 120

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


def _show(text: str) -> str:
    """``text`` on one line (control characters escaped) and short enough to read in an error."""
    shown = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= _SHOWN_CHARS else f"{shown[: _SHOWN_CHARS - 3]}..."


def _check_ascii(text: str, where: str) -> None:
    """Refuse the first non-ASCII character, naming it and the field it sits in."""
    for index, char in enumerate(text):
        if char.isascii():
            continue
        colons = text[:index].count(":")
        field_name = _FIELDS[colons] if colons < len(_FIELDS) else "the spec"
        described = " ".join(filter(None, (f"U+{ord(char):04X}", unicodedata.name(char, ""))))
        raise InputSpecError(
            f"{where}: {field_name} has the non-ASCII character {_show(char)!r} ({described}); "
            "use ASCII letters, digits 0-9 and . _ = , : + -"
        )


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
    _check_ascii(text, where)
    parts = text.strip().split(":")
    if len(parts) not in (3, 4):
        raise InputSpecError(
            f"{where}: expected NAME:DTYPE:DIMS[:LOW..HIGH], e.g. image:float32:batch=1,3,224,224"
        )
    name, dtype_text, dims_text = (p.strip() for p in parts[:3])
    if not _NAME.fullmatch(name):
        raise InputSpecError(f"{where}: NAME '{_show(name)}' must be an identifier (letters, digits, _)")
    dtype = _DTYPE_ALIASES.get(dtype_text.lower(), dtype_text.lower())
    if dtype not in DTYPES:
        raise InputSpecError(f"{where}: unknown DTYPE '{_show(dtype_text)}' (one of {', '.join(DTYPES)})")
    dims = tuple(_parse_dim(item.strip(), where) for item in dims_text.split(",")) if dims_text else ()
    low: float | None = None
    high: float | None = None
    if len(parts) == 4:
        range_text = _show(parts[3].strip())
        low, high = _parse_range(parts[3].strip(), where)
        if dtype == "bool":
            raise InputSpecError(f"{where}: a bool input takes no LOW..HIGH range")
        if DTYPES[dtype].kind in "iu":
            if not (float(low).is_integer() and float(high).is_integer()):
                raise InputSpecError(f"{where}: integer input needs an integer range, got '{range_text}'")
            low, high = int(low), int(high)
            info = np.iinfo(DTYPES[dtype])
            if low < info.min or high - 1 > info.max:
                raise InputSpecError(
                    f"{where}: range '{range_text}' does not fit {dtype} ([{info.min}, {info.max + 1}))"
                )
        else:
            low, high = float(low), float(high)
            if not low < high:
                raise InputSpecError(f"{where}: range '{range_text}' needs LOW < HIGH as {dtype}")
            finfo = np.finfo(DTYPES[dtype])
            top = float(finfo.max)
            if low < -top or high > top:
                raise InputSpecError(
                    f"{where}: range '{range_text}' does not fit {dtype} ([{-top:.8g}, {top:.8g}])"
                )
            if not math.isfinite(high - low):
                raise InputSpecError(
                    f"{where}: range '{range_text}' is too wide to draw {dtype} from: HIGH - LOW must be at "
                    f"most {top:.8g}"
                )
    tensor = TensorSpec(name, dtype, dims, low, high)
    example = tuple(d.size for d in dims)
    _check_size(tensor, example, "at the example size", where)
    return tensor


def _parse_dim(item: str, where: str) -> DimSpec:
    label, sep, size_text = item.partition("=")
    if not sep:
        label, size_text = "", item
    label, size_text = label.strip(), size_text.strip()
    if sep and not _LABEL.fullmatch(label):
        raise InputSpecError(f"{where}: dim label '{_show(label)}' must be an identifier, as in batch=1")
    shown = _show(item)
    if size_text.startswith("-") and _SIZE.fullmatch(size_text[1:]):
        raise InputSpecError(f"{where}: dim '{shown}' must be a positive size")
    if not _SIZE.fullmatch(size_text):
        raise InputSpecError(
            f"{where}: dim '{shown}' is neither an integer nor label=size (e.g. 3 or batch=1)"
        )
    if len(size_text) > 18:
        raise InputSpecError(f"{where}: dim '{shown}' is too large: sizes must stay below 10**18")
    size = int(size_text)
    if size == 0 and not sep:
        raise InputSpecError(f"{where}: dim '{shown}' must be a positive size")
    return DimSpec(size, label or None)


def _parse_range(text: str, where: str) -> tuple[float, float]:
    """``LOW..HIGH`` in plain ASCII decimal notation (``1_000``, hex and ``inf`` are refused). Integers stay
    exact ``int`` so that int64 bounds near 2**63 are not rounded through float."""
    low_text, sep, high_text = (t.strip() for t in text.partition(".."))
    shown = _show(text)
    tokens = (low_text, high_text)
    if any(t.lstrip("+-").lower() in _NOT_FINITE for t in tokens):
        raise InputSpecError(f"{where}: range '{shown}' must be finite")
    if not sep or not all(_DECIMAL.fullmatch(t) for t in tokens):
        raise InputSpecError(f"{where}: range '{shown}' must be LOW..HIGH, e.g. 0..30522")
    low, high = _to_number(low_text), _to_number(high_text)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputSpecError(f"{where}: range '{shown}' must be finite")
    if not low < high:
        raise InputSpecError(f"{where}: range '{shown}' needs LOW < HIGH")
    return low, high


def _to_number(token: str) -> float:
    return int(token) if _INTEGER.fullmatch(token) and len(token) <= 40 else float(token)


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
