"""JSON in and out: orjson for the bodies a server sees all day, bounded pieces for the large ones, so one
large body never holds the GIL (and the event loop) for long.

Small bodies (up to ``INLINE_BYTES``) are parsed by orjson, five to ten times faster than ``json.loads``;
a body orjson refuses is read again by ``json.loads``, which also takes ``NaN``/``Infinity`` tokens and
UTF-16/32, so that the validation after it answers exactly as before (a NaN input is refused by name, not
as "not JSON"). Arrays are encoded by orjson straight from numpy, without ``tolist()``.

For large bodies:

``json.loads`` and ``json.dumps`` are C calls that keep the GIL from start to end: a 60 MB body is about half
a second of it on a fast core (and 20 s was measured with six at once on 2 busy cores), during which no other
thread, the event loop answering ``/v2/health/live`` included, can run. Here the document structure is
scanned by the standard library's pure-Python scanner (which lets go of the GIL every few milliseconds) and
every flat array of numbers, the bulk of a KServe v2 body, is parsed by the C parser in slices of
``CHUNK_CHARS`` characters, into a numpy array. Encoding does the same in reverse, and writes NaN and
+/-Inf as ``null``: JSON has no token for them (``NaN`` is not JSON), and a tensor's JSON data are numbers.

The result is the document ``json.loads`` would return, except that a flat array longer than
``CHUNK_CHARS`` characters comes back as a 1-D numpy array instead of a list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json.decoder import JSONArray  # type: ignore[attr-defined]
from json.scanner import py_make_scanner  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import orjson

__all__ = ["CHUNK_CHARS", "CHUNK_VALUES", "INLINE_BYTES", "dumps", "dumps_values", "loads"]

CHUNK_CHARS = 128 * 1024
"""Characters of numbers parsed per C call: about 1 ms of GIL on a 2020s core."""

INLINE_BYTES = 256 * 1024
"""Bodies up to this size are parsed by one ``json.loads`` call (a few ms): the scanner costs more than it
saves below it."""

CHUNK_VALUES = 64 * 1024
"""Values encoded per orjson call: about 1 ms of GIL."""

_NUMPY = orjson.OPT_SERIALIZE_NUMPY

_STRUCTURE = ("[", '"', "{", "}")
"""Characters that make an array more than a flat list of numbers, booleans and nulls."""

_NONSPACE = re.compile(r"\S")


def loads(body: bytes | str) -> Any:
    """The JSON document in ``body``.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``), or not UTF-8/16/32.
        RecursionError: nested deeper than the interpreter's recursion limit.
    """
    if len(body) <= INLINE_BYTES:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return json.loads(body)  # NaN/Infinity tokens, UTF-16/32, numbers past float64: as before
    text = body if isinstance(body, str) else bytes(body).decode(json.detect_encoding(body))
    return _ChunkedDecoder().decode(text)


class _ChunkedDecoder(json.JSONDecoder):
    """The pure-Python scanner with ``parse_array`` replaced: flat arrays go to the C parser in slices."""

    def __init__(self) -> None:
        super().__init__()
        self.parse_array = _parse_array
        self.scan_once = py_make_scanner(self)


def _parse_array(s_and_end: tuple[str, int], scan_once: Callable[[str, int], Any]) -> tuple[Any, int]:
    text, end = s_and_end  # ``end``: just after the opening bracket
    close = text.find("]", end)
    if close < 0 or any(text.find(mark, end, close) >= 0 for mark in _STRUCTURE):
        return JSONArray(s_and_end, scan_once)  # nested, strings or objects: element by element
    if close - end <= CHUNK_CHARS:
        return json.loads(text[end - 1 : close + 1]), close + 1
    return _flat_numbers(text, end, close), close + 1


def _flat_numbers(text: str, start: int, close: int) -> np.ndarray:
    """The values of ``text[start:close]`` (comma-separated scalars), parsed slice by slice at commas.

    Each slice becomes an array as ``np.asarray`` makes it of its list; concatenating them promotes dtypes
    the way ``np.asarray`` of the whole list would (ints with floats become floats, None makes objects).
    """
    pieces: list[np.ndarray] = []
    position = start
    while position < close:
        cut = min(position + CHUNK_CHARS, close)
        if cut < close:
            comma = text.rfind(",", position, cut)
            cut = comma if comma > position else text.find(",", cut, close)
            cut = close if cut < 0 else cut
        values = json.loads(f"[{text[position:cut]}]")
        if not values:
            raise json.JSONDecodeError("Expecting value", text, position)
        pieces.append(np.asarray(values))
        position = cut + 1
        if cut < close and _NONSPACE.search(text, position, close) is None:
            raise json.JSONDecodeError("Expecting value (a trailing comma)", text, cut)
    return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def dumps(document: Any) -> bytes:
    """``document`` as compact JSON, numpy arrays and scalars included, non-finite floats as ``null``."""
    return orjson.dumps(document, option=_NUMPY, default=_fallback)


def dumps_values(array: np.ndarray) -> bytes:
    """The JSON array of ``array``'s values, flat and row-major, non-finite floats as ``null``; encoded in
    slices of ``CHUNK_VALUES`` values, so a large output never holds the GIL for long either."""
    flat = np.ascontiguousarray(array).reshape(-1)
    parts = [
        dumps(flat[offset : offset + CHUNK_VALUES])[1:-1] for offset in range(0, flat.size, CHUNK_VALUES)
    ]
    return b"[" + b",".join(part for part in parts if part) + b"]"


def _fallback(value: Any) -> Any:
    """What orjson does not encode itself: arrays of other dtypes (their values one by one)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
