"""Input specs: what the model is fed, which dims may change, and how example data is drawn.

The command-line form is ``NAME:DTYPE:DIMS[:LOW..HIGH]``. DIMS are comma-separated; each is an integer (a
static dim) or a dynamic dim: ``label=SIZE`` (its example size; legal sizes 1 and up, or the recipe's range),
``label=LOW..HIGH`` (legal sizes LOW to HIGH; the example size is LOW, which may be 0), and either followed
by ``%N``: only multiples of N are legal (``h=64..512%4``; the example size is then LOW rounded up to a
multiple of N, and ``h=64%4`` needs SIZE to be one). A derived dim, ``label=a+b`` (a decoder's attention
mask: ``total=past+seq``), is always the sum of the sizes of dims ``a`` and ``b``, which other inputs define;
it has no size or range of its own and is never a free dim of the spec. The same label in two inputs names
the same dim, with one range; a range written here replaces the recipe's ``[inputs.dims]`` range for that
label. Numbers are drawn from ``[LOW, HIGH)`` when a range is given (integers) or uniformly (floats); without
a range floats are standard normal and integers are drawn from ``[0, 10)``.

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

from exporter.errors import InputSpecError
from exporter.specs.dims import DerivedUse, DynamicDim, check_derived, derived_conflict, derived_range
from exporter.specs.parser import DTYPES, parse_fields
from exporter.specs.parser import show as _show
from exporter.specs.shape_cases import ShapeCase, larger_size, shape_cases, trace_sizes

__all__ = [
    "DTYPES",
    "MAX_ELEMENTS",
    "DimSpec",
    "DynamicDim",
    "InputSpec",
    "ShapeCase",
    "TensorSpec",
    "larger_size",
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
    """One dimension: its example size and, when dynamic, the label shared by every input using it, with
    the range written beside it (``label=LOW..HIGH``: ``low``, ``high``; ``%N``: ``multiple_of``).

    With ``low`` set, ``size`` is ``low`` rounded up to ``multiple_of``, as the parser makes it, so that
    ``str`` (which writes the range, not the size) reads back the same. A derived dim (``total=past+seq``)
    has ``parts``, the labels whose sizes it sums, and no size (0), range or multiple of its own.
    """

    size: int
    label: str | None = None
    low: int | None = None
    high: int | None = None
    multiple_of: int = 1
    parts: tuple[str, ...] = ()

    @property
    def dynamic(self) -> bool:
        return self.label is not None

    @property
    def range(self) -> DynamicDim | None:
        """The legal sizes written with this dim; None when it gives only its example size."""
        if self.label is None or self.parts or (self.low is None and self.multiple_of == 1):
            return None
        return DynamicDim(self.label, 1 if self.low is None else self.low, self.high, self.multiple_of)

    def __str__(self) -> str:
        if not self.label:
            return str(self.size)
        if self.parts:
            return f"{self.label}={'+'.join(self.parts)}"
        value = str(self.size) if self.low is None else f"{self.low}..{self.high}"
        return f"{self.label}={value}" + (f"%{self.multiple_of}" if self.multiple_of != 1 else "")


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
        """The concrete shape with each dynamic dim at ``sizes[label]`` and each derived dim at the sum of
        its parts' sizes (even when ``sizes`` names it too, so that a shape is always consistent)."""
        return tuple(
            sum(sizes[p] for p in d.parts) if d.parts else sizes[d.label] if d.label else d.size
            for d in self.dims
        )

    def __str__(self) -> str:
        text = f"{self.name}:{self.dtype}:{','.join(str(d) for d in self.dims)}"
        if self.low is not None and self.high is not None:
            text += f":{_number(self.low)}..{_number(self.high)}"
        return text


@dataclass(frozen=True)
class InputSpec:
    """Every input of the model, in the order they are passed, plus the legal range of each dynamic dim.

    A dim's range comes from the inputs (``batch=1..16``) or from ``dynamic_dims`` (a recipe's
    ``[inputs.dims]``), not both unless equal; a dim with neither gets ``DynamicDim(label)`` (1 and up).
    A derived dim (``total=past+seq``) is in neither ``dynamic_dims`` nor ``example_sizes``: see
    ``derived_dims``; its parts must be plain dynamic dims some input defines.
    Each input must fit ``MAX_ELEMENTS`` (2**31 elements) and ``memory_limit()`` (a quarter of RAM) at the
    largest shape ``shape_cases`` draws (``max``, every dim at its declared maximum, or ``large``, about
    twice the example), else InputSpecError.
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
        sizes, written = self._example_sizes_and_written_ranges()
        given = {d.label: d for d in self.dynamic_dims}
        self._check_derived(given)
        for label, (dim, name) in written.items():
            if label in given and given[label] != dim:
                raise InputSpecError(
                    f"dim '{label}' has the range {dim} in input '{name}' but {given[label]} in the dim "
                    "ranges given beside the inputs (a recipe's [inputs.dims]); give it in one place"
                )
        merged = dict(given)
        for label in sizes:
            if label not in merged:
                merged[label] = written[label][0] if label in written else DynamicDim(label)
        object.__setattr__(self, "dynamic_dims", tuple(merged.values()))
        for dyn in self.dynamic_dims:
            if dyn.label not in sizes:
                raise InputSpecError(f"dim '{dyn.label}' has a range but no input uses it")
            _check_range(dyn, sizes[dyn.label])
        cases = shape_cases(self)
        for tensor in self.tensors:
            largest = max(cases, key=lambda c: math.prod(tensor.shape(c.sizes)))
            where, fix = "at the example size", None
            if largest.name == "max":
                where = "at verification case 'max' (every dim at its declared maximum, which is verified)"
                fix = "lower the dim's declared maximum (HIGH in label=LOW..HIGH, or max in [inputs.dims])"
            elif largest.name not in ("export", "values"):
                where = f"at verification case '{largest.name}' (up to about twice the example size)"
            _check_size(tensor, tensor.shape(largest.sizes), where, f"input '{tensor.name}'", fix)

    def _example_sizes_and_written_ranges(self) -> tuple[dict[str, int], dict[str, tuple[DynamicDim, str]]]:
        """Each label's example size, and the range written beside it (with the input it is written in);
        refuses a label given two sizes or two ranges."""
        sizes: dict[str, int] = {}
        written: dict[str, tuple[DynamicDim, str]] = {}
        for tensor in self.tensors:
            for dim in tensor.dims:
                if dim.label is None or dim.parts:
                    continue
                stated = dim.range
                if stated is not None:
                    first, where = written.setdefault(dim.label, (stated, tensor.name))
                    if first != stated:
                        raise InputSpecError(
                            f"dim '{dim.label}' has the range {stated} in input '{tensor.name}' but {first} "
                            f"in input '{where}'; a shared label has one range: write the same in both"
                        )
                seen = sizes.setdefault(dim.label, dim.size)
                if seen != dim.size:
                    hint = ""
                    if dim.label in written:
                        hint = " (a range's example size is its LOW, rounded up to its multiple: repeat it)"
                    raise InputSpecError(
                        f"input '{tensor.name}': dim '{dim.label}' has example size {dim.size} here but "
                        f"{seen} in another input; a shared label must have one size{hint}"
                    )
        return sizes, written

    def _check_derived(self, given: Mapping[str, DynamicDim]) -> None:
        """Refuse derived dims that cannot be honoured (see ``exporter.specs.dims.check_derived``)."""
        plain: dict[str, str] = {}
        uses = []
        for tensor in self.tensors:
            for dim in tensor.dims:
                if dim.parts and dim.label is not None:
                    ranged = (
                        dim.size != 0 or dim.low is not None or dim.high is not None or dim.multiple_of != 1
                    )
                    uses.append(DerivedUse(tensor.name, dim.label, dim.parts, ranged))
                elif dim.label is not None:
                    plain.setdefault(dim.label, tensor.name)
        check_derived(uses, plain, given)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def example_sizes(self) -> dict[str, int]:
        """Each free dynamic dim's example size (derived dims follow from these)."""
        return {d.label: d.size for t in self.tensors for d in t.dims if d.label is not None and not d.parts}

    @property
    def derived_dims(self) -> dict[str, tuple[str, ...]]:
        """Each derived dim's label and the labels whose sizes it sums: ``{"total": ("past", "seq")}``."""
        return {d.label: d.parts for t in self.tensors for d in t.dims if d.label is not None and d.parts}

    def dim(self, label: str) -> DynamicDim:
        """The legal sizes of a dim; for a derived dim, the sums of its parts' bounds (``derived_range``)."""
        parts = self.derived_dims.get(label)
        if parts is not None:
            return derived_range(label, [self.dim(p) for p in parts])
        return next(d for d in self.dynamic_dims if d.label == label)

    def derived_conflict(self, sizes: Mapping[str, int]) -> str | None:
        """Why ``sizes`` (read off real arrays, which may name derived dims) break a derived dim, as
        ``dim 'total' is 7 but past + seq is 3 + 5 = 8``; None when every derived dim they name adds up."""
        return derived_conflict(self.derived_dims, sizes)

    def with_overrides(self, tensors: Iterable[TensorSpec]) -> InputSpec:
        """This spec with the given tensors replacing (by name) or appended to its own; a dim range written
        in them (``batch=1..16``) replaces this spec's range for that label."""
        by_name = {t.name: t for t in self.tensors}
        given = tuple(tensors)
        for tensor in given:
            by_name[tensor.name] = tensor
        used = {d.label for t in by_name.values() for d in t.dims if d.label}
        replaced = {d.label for t in given for d in t.dims if d.range is not None}
        kept = tuple(d for d in self.dynamic_dims if d.label in used and d.label not in replaced)
        return InputSpec(tuple(by_name.values()), kept)

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
                d.label: {
                    "min": d.min,
                    "max": d.max,
                    "example": self.example_sizes[d.label],
                    **({"multiple_of": d.multiple_of} if d.multiple_of != 1 else {}),
                }
                for d in self.dynamic_dims
            },
            **(
                {"derived_dims": {k: list(v) for k, v in derived.items()}}
                if (derived := self.derived_dims)
                else {}
            ),
        }


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def _check_range(dyn: DynamicDim, size: int) -> None:
    """Refuse a range that is empty or not sane, or that leaves out the example size."""
    step = dyn.multiple_of
    if not isinstance(step, int) or step < 1:
        raise InputSpecError(f"dim '{dyn.label}': multiple_of must be an integer >= 1, got {step}")
    if dyn.min < 0 or (dyn.max is not None and dyn.max < dyn.min):
        raise InputSpecError(f"dim '{dyn.label}': bad range min={dyn.min} max={dyn.max}")
    if dyn.min % step:  # DynamicDim rounds the bounds to multiples unless no multiple lies between them
        raise InputSpecError(
            f"dim '{dyn.label}': no multiple of {step} lies in [{dyn.min}, {dyn.max}]; widen the range or "
            "change multiple_of"
        )
    if size % step:
        raise InputSpecError(
            f"dim '{dyn.label}': example size {size} is not a multiple of {step}, as its range {dyn} needs"
        )
    if not dyn.allows(size):
        raise InputSpecError(
            f"dim '{dyn.label}': example size {size} is outside its range [{dyn.min}, {dyn.max}]"
            + (f" (multiples of {step})" if step != 1 else "")
        )


def _check_size(tensor: TensorSpec, shape: tuple[int, ...], where: str, who: str, fix: str | None) -> None:
    """Refuse a tensor over ``MAX_ELEMENTS`` or ``memory_limit()`` bytes at ``shape``."""
    elements = math.prod(shape)
    size = elements * tensor.numpy_dtype.itemsize
    limit = memory_limit()
    if elements <= MAX_ELEMENTS and (limit is None or size <= limit):
        return
    caps = f"{MAX_ELEMENTS} elements" + (f" and {limit / 1e9:.1f} GB (a quarter of RAM)" if limit else "")
    fix = fix or (
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
    """Parse ``NAME:DTYPE:DIMS[:LOW..HIGH]`` (dims as in the module docstring: ``3``, ``batch=1``,
    ``batch=1..16``, ``h=64..512%4``); errors name the field that is wrong."""
    where = f"bad input spec '{_show(text)}'"
    fields = parse_fields(text, where)
    dims = tuple(DimSpec(*dim) for dim in fields.dims)
    tensor = TensorSpec(fields.name, fields.dtype, dims, fields.low, fields.high)
    example = tuple(d.size for d in dims if not d.parts)  # a derived dim's size needs the other inputs
    _check_size(tensor, example, "at the example size", where, None)
    return tensor


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
