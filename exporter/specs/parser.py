"""The command-line form of one input, ``NAME:DTYPE:DIMS[:LOW..HIGH]``, read strictly (ASCII only, ranges
that fit the dtype, dim ranges that hold a legal size; see :mod:`exporter.specs.inputs`).
``exporter.specs.inputs.parse_tensor_spec`` builds the TensorSpec from these fields and checks its size, which
needs the spec types this module stays below.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import NamedTuple

import numpy as np

from exporter.errors import InputSpecError

__all__ = ["DTYPES", "ParsedDim", "ParsedSpec", "parse_fields", "round_up", "show"]

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
_DIM_VALUE = re.compile(r"(?P<low>[0-9]+)(?:\s*\.\.\s*(?P<high>[0-9]+))?(?:\s*%\s*(?P<multiple>[0-9]+))?")
"""A dynamic dim's value: ``SIZE``, ``LOW..HIGH``, either followed by ``%N`` (multiples of N only)."""
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE = {"inf", "infinity", "nan"}
_FIELDS = ("NAME", "DTYPE", "DIMS", "LOW..HIGH")
_SHOWN_CHARS = 120


class ParsedDim(NamedTuple):
    """One checked dim: its example size, its label (None when static) and the range written with it.

    ``low``/``high`` are None unless written as ``label=LOW..HIGH``; then ``size`` is ``LOW`` rounded up to
    ``multiple_of``. ``multiple_of`` is 1 unless written with ``%N``. ``parts`` are the labels of a derived
    dim (``total=past+seq``: its size is always their sum, so it has no size of its own and ``size`` is 0).
    """

    size: int
    label: str | None
    low: int | None = None
    high: int | None = None
    multiple_of: int = 1
    parts: tuple[str, ...] = ()


class ParsedSpec(NamedTuple):
    """The checked fields of one spec."""

    name: str
    dtype: str
    dims: tuple[ParsedDim, ...]
    low: float | None
    high: float | None


def round_up(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` at or above ``size``."""
    return -(-size // multiple) * multiple


def show(text: str) -> str:
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
            f"{where}: {field_name} has the non-ASCII character {show(char)!r} ({described}); "
            "use ASCII letters, digits 0-9 and . _ = , : + - %"
        )


def parse_fields(text: str, where: str) -> ParsedSpec:
    """The fields of ``NAME:DTYPE:DIMS[:LOW..HIGH]``, each checked; errors start with ``where``.

    A dim in DIMS is ``SIZE`` (static) or ``label=SIZE``, ``label=LOW..HIGH``, ``label=SIZE%N``,
    ``label=LOW..HIGH%N`` (dynamic; ``%N``: multiples of N only), or ``label=a+b`` (derived: the sum of the
    sizes of dims ``a`` and ``b``, defined elsewhere). A range's example size is LOW rounded up to the
    multiple; LOW may be 0 (an empty past, for example).
    """
    _check_ascii(text, where)
    parts = text.strip().split(":")
    if len(parts) not in (3, 4):
        raise InputSpecError(
            f"{where}: expected NAME:DTYPE:DIMS[:LOW..HIGH], e.g. image:float32:batch=1,3,224,224"
        )
    name, dtype_text, dims_text = (p.strip() for p in parts[:3])
    if not _NAME.fullmatch(name):
        raise InputSpecError(f"{where}: NAME '{show(name)}' must be an identifier (letters, digits, _)")
    dtype = _DTYPE_ALIASES.get(dtype_text.lower(), dtype_text.lower())
    if dtype not in DTYPES:
        raise InputSpecError(f"{where}: unknown DTYPE '{show(dtype_text)}' (one of {', '.join(DTYPES)})")
    dims = tuple(_parse_dim(item.strip(), where) for item in dims_text.split(",")) if dims_text else ()
    low: float | None = None
    high: float | None = None
    if len(parts) == 4:
        range_text = show(parts[3].strip())
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
    return ParsedSpec(name, dtype, dims, low, high)


def _parse_dim(item: str, where: str) -> ParsedDim:
    """``3`` (static), or ``label=SIZE``, ``label=LOW..HIGH``, either with ``%N``; see ``ParsedDim``."""
    label, sep, value = item.partition("=")
    if not sep:
        label, value = "", item
    label, value = label.strip(), value.strip()
    if sep and not _LABEL.fullmatch(label):
        raise InputSpecError(f"{where}: dim label '{show(label)}' must be an identifier, as in batch=1")
    shown = show(item)
    if sep and "+" in value:
        return _parse_derived(label, value, shown, where)
    if value.startswith("-") and _SIZE.fullmatch(value[1:]):
        raise InputSpecError(f"{where}: dim '{shown}' must be a positive size")
    match = _DIM_VALUE.fullmatch(value)
    if match is None or (not sep and value != match["low"]):
        if sep and (".." in value or "%" in value):
            raise InputSpecError(
                f"{where}: dim '{shown}' is not label=SIZE, label=LOW..HIGH or either with %N (e.g. "
                "batch=1..16 or h=64..512%4)"
            )
        if match is not None or ".." in value or "%" in value:
            raise InputSpecError(
                f"{where}: dim '{shown}' has a range but no label: give it one, as in batch=1..16 or "
                "h=64..512%4"
            )
        if sep and _LABEL.fullmatch(value):
            raise InputSpecError(
                f"{where}: dim '{shown}' is neither a size nor a sum: a derived dim sums two or more labels "
                f"(as in {label}={value}+seq); for the same dim as '{value}', write {value} in both inputs"
            )
        raise InputSpecError(
            f"{where}: dim '{shown}' is neither an integer nor label=size (e.g. 3, batch=1 or batch=1..16)"
        )
    if any(len(part) > 18 for part in match.groups() if part is not None):
        raise InputSpecError(f"{where}: dim '{shown}' is too large: sizes must stay below 10**18")
    size = int(match["low"])
    if not sep:
        if size == 0:
            raise InputSpecError(f"{where}: dim '{shown}' must be a positive size")
        return ParsedDim(size, None)
    multiple = int(match["multiple"] or 1)
    if multiple == 0:
        raise InputSpecError(f"{where}: dim '{shown}': the multiple after % must be at least 1, as in h=64%4")
    if match["high"] is None:
        if size % multiple:
            lower, upper = size // multiple * multiple, round_up(size, multiple)
            raise InputSpecError(
                f"{where}: dim '{shown}': example size {size} is not a multiple of {multiple}; use "
                + (f"{lower} or {upper}" if lower else str(upper))
            )
        return ParsedDim(size, label, None, None, multiple)
    low, high = size, int(match["high"])
    if low > high:
        raise InputSpecError(f"{where}: dim '{shown}' needs LOW <= HIGH, as in {label}={high}..{low}")
    example = round_up(low, multiple)
    if example > high:
        raise InputSpecError(
            f"{where}: dim '{shown}' holds no multiple of {multiple} between {low} and {high}: widen the "
            "range or change the multiple"
        )
    return ParsedDim(example, label, low, high, multiple)


def _parse_derived(label: str, value: str, shown: str, where: str) -> ParsedDim:
    """``label=a+b[+c...]``: a dim whose size is the sum of other dynamic dims' sizes, with no range, size
    or multiple of its own (those follow from its parts)."""
    parts = tuple(part.strip() for part in value.split("+"))
    example = f"{label}={'+'.join(p for p in parts if _LABEL.fullmatch(p)) or 'past+seq'}"
    if any(".." in part or "%" in part for part in parts):
        raise InputSpecError(
            f"{where}: derived dim '{shown}' takes no range or %N of its own (its sizes follow from its "
            f"parts): write {example} and give the parts their ranges"
        )
    for part in parts:
        if not _LABEL.fullmatch(part):
            raise InputSpecError(
                f"{where}: derived dim '{shown}': '{show(part)}' is not a dim label; a derived dim is a sum "
                "of two or more dynamic dims' labels, as in total=past+seq"
            )
    if label in parts:
        raise InputSpecError(f"{where}: derived dim '{shown}' includes itself; name only other dims")
    if len(set(parts)) != len(parts):
        raise InputSpecError(
            f"{where}: derived dim '{shown}' names a dim twice; name each part once, as in total=past+seq"
        )
    return ParsedDim(0, label, None, None, 1, parts)


def _parse_range(text: str, where: str) -> tuple[float, float]:
    """``LOW..HIGH`` in plain ASCII decimal notation (``1_000``, hex and ``inf`` are refused). Integers stay
    exact ``int`` so that int64 bounds near 2**63 are not rounded through float."""
    low_text, sep, high_text = (t.strip() for t in text.partition(".."))
    shown = show(text)
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
