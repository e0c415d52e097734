"""The fields of manifest.json that ``exporter verify`` reads, with their JSON types, checked before use.

A declarative table, so a damaged or foreign manifest is one line naming the field (exit 2), never a
``KeyError`` halfway through the checks. Keys not listed are ignored: newer manifests may add fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["manifest_problem"]


def manifest_problem(manifest: Any) -> str | None:
    """What is wrong with ``manifest`` (``is missing 'tolerance'``, ``has 'x' = 3, not ...``), or None."""
    return _schema_problem(manifest, _MANIFEST, "")


@dataclass(frozen=True)
class _Keys:
    """An object with these keys (``optional`` ones may be absent); other keys are ignored."""

    required: Mapping[str, _Schema]
    optional: Mapping[str, _Schema] = field(default_factory=dict)


@dataclass(frozen=True)
class _Each:
    """A list whose every item matches ``item``."""

    item: _Schema


@dataclass(frozen=True)
class _Values:
    """An object with any keys (file names, dim labels) whose every value matches ``item``."""

    item: _Schema


@dataclass(frozen=True)
class _Maybe:
    """``None`` or ``item``."""

    item: _Schema


@dataclass(frozen=True)
class _Either:
    """``present`` when the object has ``key``, else ``absent`` (golden cases vs kept int8 samples)."""

    key: str
    present: _Keys
    absent: _Keys


_Schema = type | tuple[type, ...] | _Keys | _Each | _Values | _Maybe | _Either
_NUMBER = (int, float)

_GOLDEN_CASE = _Keys(
    {
        "case": str,
        "sizes": _Values(int),
        "seed": int,
        "inputs": str,
        "outputs": str,
        "output_names": _Each(str),
    }
)
_GOLDEN_SAMPLES = _Keys({"case": str, "samples": int, "inputs": str})
_MANIFEST = _Keys(
    required={
        "input_spec": _Keys(
            {
                "inputs": _Each(_Keys({"spec": str})),
                "dynamic_dims": _Values(_Keys({"min": int, "max": _Maybe(int)})),
            }
        ),
        "tolerance": _Keys({"atol": _NUMBER, "rtol": _NUMBER}),
        "golden": _Each(_Either("outputs", _GOLDEN_CASE, _GOLDEN_SAMPLES)),
        "files": _Values(_Keys({"sha256": str})),
    },
    optional={
        "name": str,
        "artifacts": _Each(
            _Keys(
                {"backend": str, "file": str},
                {"call": _Keys({"positional": _Each(str), "keyword": _Each(str)})},
            )
        ),
        "onnx": _Maybe(_Keys({"file": str})),
        "int8": _Maybe(_Keys({"file": str, "budget": dict})),
        "output_names": _Maybe(_Each(str)),
        "source": _Keys({}, {"model": _Maybe(str), "model_kwargs": _Maybe(dict)}),
        "benchmark": _Keys({"batch_dim": str, "batch_sizes": _Each(int)}),
        "seed": int,
    },
)
_KINDS = {str: "a string", int: "an integer", _NUMBER: "a number", dict: "an object", list: "a list"}
_CONTAINERS: dict[type, type] = {_Keys: dict, _Values: dict, _Each: list}


def _schema_problem(value: Any, schema: _Schema, where: str) -> str | None:
    """What is wrong with ``value`` at ``where`` (``is missing 'x'``, ``has 'x' = 3, not ...``), or None."""
    if isinstance(schema, _Maybe):
        return None if value is None else _schema_problem(value, schema.item, where)
    if isinstance(schema, _Either):
        chosen = schema.present if isinstance(value, dict) and schema.key in value else schema.absent
        return _schema_problem(value, chosen, where)
    expected = _CONTAINERS.get(type(schema), schema)
    assert isinstance(expected, type | tuple)
    if not _has_type(value, expected):
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return f"has '{where or '(the whole document)'}' = {shown}, not {_KINDS.get(expected, expected)}"
    children: list[tuple[str, Any, _Schema]] = []
    if isinstance(schema, _Keys):
        missing = next((key for key in schema.required if key not in value), None)
        if missing is not None:
            return f"is missing '{_join(where, missing)}'"
        keys = {**schema.required, **schema.optional}
        children = [(_join(where, k), value[k], item) for k, item in keys.items() if k in value]
    elif isinstance(schema, _Values):
        children = [(f"{where}[{json.dumps(k)}]", v, schema.item) for k, v in value.items()]
    elif isinstance(schema, _Each):
        children = [(f"{where}[{i}]", v, schema.item) for i, v in enumerate(value)]
    return next(filter(None, (_schema_problem(v, item, w) for w, v, item in children)), None)


def _has_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that JSON ``true`` is not a number."""
    types = expected if isinstance(expected, tuple) else (expected,)
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
