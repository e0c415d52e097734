"""torch.export's constraint errors, read: which dynamic dim the model pins, and what torch's "Suggested
fixes" ask of the input spec, said in the spec's own syntax (``h=LOW..HIGH%4``) rather than torch's
(``h = 4*_h``). The full text stays available through ``exporter.errors.explain``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.errors import first_line

__all__ = ["SpecFix", "export_reason", "suggested_fixes"]

_SPECIALIZED = re.compile(
    r"You marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)"
)
_FIXES_BLOCK = re.compile(r"Suggested fixes:\s*\n((?:[ \t]+\S.*\n?)+)")
_MULTIPLE = re.compile(r"^(\w+) = (\d+)\*(\w+)$")
_RANGE = re.compile(r"^(\w+) = Dim\('\w+'(?:, min=(\d+))?(?:, max=(\d+|oo))?\)$")
_CONSTANT = re.compile(r"^(\w+) = (\d+)$")
_EQUAL = re.compile(r"^(\w+) = (\w+)$")


@dataclass(frozen=True)
class SpecFix:
    """One thing torch asks of a dynamic dim, and how to say it in ``--input`` and a recipe."""

    dim: str
    kind: str
    """``multiple``, ``range``, ``static`` or ``equal``."""
    value: str
    bounds: str = "LOW..HIGH"
    """For a multiple: the legal range torch gave its helper dim, scaled (``64..512``), when bounded."""

    def advice(self) -> str:
        if self.kind == "multiple":
            return (
                f"'{self.dim}' must be a multiple of {self.value} (--input "
                f"{self.dim}={self.bounds}%{self.value}, recipe dims.{self.dim}.multiple_of = {self.value})"
            )
        if self.kind == "range" and self.value.endswith(".."):
            low = self.value.removesuffix("..")
            return f"'{self.dim}' must be at least {low} (--input {self.dim}={low}..HIGH)"
        if self.kind == "range":
            return f"'{self.dim}' must stay within {self.value} (--input {self.dim}={self.value})"
        if self.kind == "static":
            return f"'{self.dim}' is always {self.value} (make it a static {self.value} in --input)"
        return f"'{self.dim}' must equal '{self.value}' (give both the same label in --input)"


def suggested_fixes(text: str) -> list[SpecFix]:
    """torch.export's "Suggested fixes" block as spec fixes; helper dims (``_h``) are dropped."""
    block = _FIXES_BLOCK.search(text)
    if not block:
        return []
    fixes: list[SpecFix] = []
    helpers: dict[str, tuple[int, int]] = {}
    for raw in block.group(1).splitlines():
        line = raw.strip()
        if line.startswith("_"):
            match = _RANGE.match(line)
            if match and match.group(2) and match.group(3) not in (None, "oo"):
                helpers[line.split(" ", 1)[0]] = (int(match.group(2)), int(match.group(3)))
            continue
        if not line:
            continue
        if match := _MULTIPLE.match(line):
            step, helper = int(match.group(2)), match.group(3)
            base_low, base_high = helpers.get(helper, (0, 0))
            bounds = f"{base_low * step}..{base_high * step}" if helper in helpers else "LOW..HIGH"
            fixes.append(SpecFix(match.group(1), "multiple", match.group(2), bounds))
        elif match := _RANGE.match(line):
            low, high = match.group(2) or "1", match.group(3)
            bounded = f"{low}..{high}" if high not in (None, "oo") else f"{low}.."
            fixes.append(SpecFix(match.group(1), "range", bounded))
        elif match := _CONSTANT.match(line):
            fixes.append(SpecFix(match.group(1), "static", match.group(2)))
        elif match := _EQUAL.match(line):
            fixes.append(SpecFix(match.group(1), "equal", match.group(2)))
    return fixes


def export_reason(error: BaseException) -> str:
    """One line for a torch.export failure: the dims the model pins, or torch's suggested fixes in spec
    syntax, or else torch's first line."""
    text = str(error)
    pinned = _SPECIALIZED.findall(text)
    if pinned:
        dims = ", ".join(f"'{name}' to {size}" for name, size in pinned)
        return (
            f"the model's code pins dynamic dim {dims}, so it cannot stay dynamic (make it static in the "
            "input spec, or change the code that turns the size into a constant)"
        )
    line = f"{type(error).__name__}: {first_line(error)}"
    fixes = suggested_fixes(text)
    if fixes:
        line += "; torch suggests: " + "; ".join(fix.advice() for fix in fixes)
    return line
