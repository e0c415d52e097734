"""The legal sizes of one dynamic dim, apart from the input specs that name it so that the shape cases drawn
from those sizes (:mod:`exporter.specs.shape_cases`) and the specs (:mod:`exporter.specs.inputs`, which
re-exports it) both build on it without importing each other; and the rules for a derived dim
(``total=past+seq``), whose size is the sum of other dims' sizes and so is never a free dim of its own."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from exporter.errors import InputSpecError
from exporter.specs.parser import round_up

__all__ = ["DerivedUse", "DynamicDim", "check_derived", "derived_conflict", "derived_range"]


@dataclass(frozen=True)
class DynamicDim:
    """Legal sizes of a dynamic dim: the multiples of ``multiple_of`` from ``min`` to ``max`` (None means
    unbounded). With ``multiple_of`` > 1 the bounds are rounded inward to multiples on construction (64..514%4
    is 64..512%4), so ``min`` and ``max`` are legal sizes; when no multiple lies between them they are kept,
    and ``InputSpec`` refuses the dim.
    """

    label: str
    min: int = 1
    max: int | None = None
    multiple_of: int = 1

    def __post_init__(self) -> None:
        step = self.multiple_of
        if not isinstance(step, int) or step <= 1 or self.min < 0:
            return
        low = round_up(self.min, step)
        high = None if self.max is None else self.max // step * step
        if high is None or low <= high:
            object.__setattr__(self, "min", low)
            object.__setattr__(self, "max", high)

    def allows(self, size: int) -> bool:
        """True when ``size`` is in range and a multiple."""
        in_range = self.min <= size and (self.max is None or size <= self.max)
        return in_range and size % self.multiple_of == 0

    def __str__(self) -> str:
        """The legal sizes as a spec writes them: ``1..16``, ``64..512%4``, ``1..unbounded``."""
        text = f"{self.min}..{'unbounded' if self.max is None else self.max}"
        return text + (f"%{self.multiple_of}" if self.multiple_of != 1 else "")


def derived_range(label: str, parts: Sequence[DynamicDim]) -> DynamicDim:
    """The sizes a derived dim can take: from the sum of its parts' minimums to the sum of their maximums
    (unbounded when one is). Every size of a part is legal, so the sum's legal sizes are this whole range
    only in general; callers that know the parts' sizes check the sum itself."""
    highs = [p.max for p in parts]
    high = None if any(h is None for h in highs) else sum(h for h in highs if h is not None)
    return DynamicDim(label, sum(p.min for p in parts), high)


def derived_conflict(derived: Mapping[str, tuple[str, ...]], sizes: Mapping[str, int]) -> str | None:
    """Why ``sizes`` break a derived dim (``dim 'total' is 7 but past + seq is 3 + 5 = 8``), or None."""
    for label, parts in derived.items():
        if label in sizes and all(p in sizes for p in parts):
            total = sum(sizes[p] for p in parts)
            if sizes[label] != total:
                terms = " + ".join(str(sizes[p]) for p in parts)
                return f"dim '{label}' is {sizes[label]} but {' + '.join(parts)} is {terms} = {total}"
    return None


def check_derived(uses: Sequence[DerivedUse], plain: Mapping[str, str], given: Collection[str]) -> None:
    """Refuse derived dims an input spec cannot honour: a sum of fewer than two dims, one with a range of
    its own, a label that is also a plain dim or summed two ways, a part that is derived (or itself) or that
    no input defines, and a range given for it beside the inputs (``given``: a recipe's ``[inputs.dims]``).
    ``plain`` maps each plain dynamic label to the first input using it."""
    first: dict[str, DerivedUse] = {}
    for use in uses:
        sum_text = f"{use.label}={'+'.join(use.parts)}"
        where = f"input '{use.tensor}': derived dim '{sum_text}'"
        if len(use.parts) < 2 or use.label in use.parts or len(set(use.parts)) != len(use.parts):
            raise InputSpecError(f"{where} must sum two or more other dims, each once, as in total=past+seq")
        if use.ranged:
            raise InputSpecError(
                f"{where} has a size, range or %N of its own; its sizes follow from its parts: write "
                f"{sum_text}"
            )
        if use.label in plain:
            raise InputSpecError(
                f"{where} is also a dim of its own in input '{plain[use.label]}': write {sum_text} there "
                "too, or give one of them another label"
            )
        seen = first.setdefault(use.label, use)
        if seen.parts != use.parts:
            raise InputSpecError(
                f"{where} is {'+'.join(seen.parts)} in input '{seen.tensor}': write the same sum in both"
            )
    for use in uses:
        where = f"input '{use.tensor}': derived dim '{use.label}={'+'.join(use.parts)}'"
        for part in use.parts:
            if part in first:
                raise InputSpecError(
                    f"{where} sums '{part}', which is itself derived in input '{first[part].tensor}': sum "
                    f"plain dims only ({'+'.join(first[part].parts)} instead of {part})"
                )
            if part not in plain:
                raise InputSpecError(
                    f"{where} sums '{part}', which no input defines: add the input that has it (as in "
                    f"NAME:DTYPE:{part}=0..64) or leave it out of the sum"
                )
        if use.label in given:
            raise InputSpecError(
                f"{where} has a range beside the inputs (a recipe's [inputs.dims]), but its sizes follow "
                f"from its parts: remove {use.label} there and give {', '.join(use.parts)} their ranges"
            )


class DerivedUse(NamedTuple):
    """One input's derived dim, as :func:`check_derived` reads it."""

    tensor: str
    label: str
    parts: tuple[str, ...]
    ranged: bool
