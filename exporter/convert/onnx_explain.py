"""One-line explanations of ONNX exporter failures for the report (the whole message goes to ``--debug``)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

__all__ = ["ANSI", "explain", "unique_warnings"]

_OPERATOR = re.compile(r"\b(aten(?:::|\.)[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?|prim::\w+)")
_OVERLOAD = re.compile(r"OpOverload\(op='([\w.]+)'")
_CALL_SITE = re.compile(
    r'The following call raised this error:\s*File "([^"]+)", line (\d+), in \w+\s*\n\s*(.+)'
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def unique_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The first line of each distinct warning, at most ten, for the report."""
    seen: list[str] = []
    for item in caught:
        text = str(item.message).strip().splitlines()[0][:200] if str(item.message).strip() else ""
        if text and text not in seen:
            seen.append(text)
    return seen[:10]


def explain(error: BaseException) -> str:
    """One line: what failed, the operator or construct it names, and where in the user's code."""
    text = ANSI.sub("", str(error)).strip()
    summary = text.split("## Exception summary", 1)[1].strip() if "## Exception summary" in text else ""
    if summary:
        first = summary.splitlines()[0]
        first = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", first)
    else:
        first = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    line = first[:300]
    operator = _OPERATOR.search(text) or _OVERLOAD.search(text)
    if operator and operator.group(1) not in line:
        line += f" [operator {operator.group(1)}]"
    where = _CALL_SITE.search(text)
    if where:
        line += f" at {Path(where.group(1)).name}:{where.group(2)} `{where.group(3).strip()}`"
    return line
