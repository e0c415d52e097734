"""The legal sizes of one dynamic dim, apart from the input specs that name it so that the shape cases drawn
from those sizes (:mod:`exporter.specs.shape_cases`) and the specs (:mod:`exporter.specs.inputs`, which
re-exports it) both build on it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.specs.parser import round_up

__all__ = ["DynamicDim"]


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
