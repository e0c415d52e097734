"""The sizes a spec is traced and verified at: the export shape, the smallest and larger legal sizes, each
dynamic dim moved alone, and every dim at its declared maximum. Every size is legal: within the dim's range
and a multiple of its ``multiple_of``. Re-exported by :mod:`exporter.specs.inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.specs.dims import DynamicDim

__all__ = ["ShapeCase", "SizedSpec", "larger_size", "shape_cases", "trace_sizes"]


class _Tensor(Protocol):
    @property
    def name(self) -> str: ...

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]: ...


class SizedSpec(Protocol):
    """What the shape cases read of an input spec (:class:`exporter.specs.inputs.InputSpec` is one): its
    tensors, its dynamic dims' ranges and their example sizes. A protocol, so that the spec can check its
    largest case in its own construction without the two modules importing each other."""

    @property
    def tensors(self) -> Sequence[_Tensor]: ...

    @property
    def dynamic_dims(self) -> Sequence[DynamicDim]: ...

    @property
    def example_sizes(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class ShapeCase:
    """A set of dynamic-dim sizes to verify at, with a short human name (``export``, ``min``, ...)."""

    name: str
    sizes: dict[str, int]

    def describe(self, spec: SizedSpec) -> str:
        return " ".join(f"{t.name}={list(t.shape(self.sizes))}" for t in spec.tensors)


def larger_size(dim: DynamicDim, example: int) -> int | None:
    """About twice the example, odd when every size is legal so that even-only assumptions show (else the
    example plus one multiple: ``2 * example + multiple_of``); capped at the max; None when the range
    forbids any size above the example."""
    size = 2 * example + dim.multiple_of
    if dim.max is not None:
        size = min(size, dim.max)
    return size if size > example else None


def shape_cases(spec: SizedSpec) -> list[ShapeCase]:
    """Sizes to verify at: the export shape, the export shape again with other values, every dynamic dim at
    its minimum, one step above the example, about twice the example, every dim with a declared maximum at
    it (``max``; the others at their example), then each dim moved alone. A dim that conversion froze fails
    at least one of them; a branch a trace froze on values fails ``values``; a model that only works up to
    some size below the declared maximum fails ``max``. Cases equal to an earlier one are left out."""
    example = spec.example_sizes
    cases = [ShapeCase("export", dict(example)), ShapeCase("values", dict(example))]
    if not spec.dynamic_dims:
        return cases
    smallest = {d.label: d.min for d in spec.dynamic_dims}
    larger = {d.label: larger_size(d, example[d.label]) or example[d.label] for d in spec.dynamic_dims}
    following = {
        d.label: step if d.max is None or step <= d.max else example[d.label]
        for d in spec.dynamic_dims
        for step in [example[d.label] + d.multiple_of]
    }
    largest = {d.label: example[d.label] if d.max is None else d.max for d in spec.dynamic_dims}
    candidates = [
        ShapeCase("min", smallest),
        ShapeCase("next", following),
        ShapeCase("large", larger),
        ShapeCase("max", largest),
    ]
    if len(spec.dynamic_dims) > 1:
        for dim in spec.dynamic_dims:
            for label, sizes in (("min", smallest), ("large", larger)):
                candidates.append(ShapeCase(f"{dim.label}-{label}", {**example, dim.label: sizes[dim.label]}))
    for case in candidates:
        if all(case.sizes != seen.sizes for seen in cases):
            cases.append(case)
    return cases


def trace_sizes(spec: SizedSpec) -> dict[str, int]:
    """Dynamic-dim sizes to trace at: torch.export specializes sizes 0 and 1 (of a dim, or of the ``N*_h``
    base of a multiple-of dim), so at least 2 (``2 * multiple_of``) where legal, else the largest legal."""
    sizes = {}
    for dim in spec.dynamic_dims:
        size = max(2 * dim.multiple_of, spec.example_sizes[dim.label])
        sizes[dim.label] = size if dim.max is None or size <= dim.max else dim.max
    return sizes
