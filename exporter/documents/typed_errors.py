"""Pydantic validation errors as one line a user can act on: ``is missing 'golden[0].seed'``,
``has 'tolerance.atol' = "1e-4", not a number``. Shared by every typed document (manifest, report), whose
entries are models or pydantic dataclasses (``documents.fields``): both kinds' errors read the same."""

from __future__ import annotations

import json
import types
import typing
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Tag, ValidationError
from pydantic_core import ErrorDetails

from exporter.errors import UsageError

__all__ = ["read_typed"]

M = TypeVar("M", bound=BaseModel)


def read_typed(model: type[M], document: dict[str, Any], named: str, kind: str) -> M:
    """``document`` as ``model``, or a ``UsageError`` naming the first bad field in one line.

    ``named`` starts the message (``manifest.json of 'DIR'``); ``kind`` says what it should have been.
    """
    try:
        return model.model_validate(document)
    except ValidationError as error:
        problem = _problem(model, error.errors(include_url=False)[0])
        raise UsageError(f"{named} {problem} (not a {kind} written by this exporter, or damaged)") from None


_KINDS = {
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "dataclass_type": "an object",
    "dataclass_args_type": "an object",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "number_type": "a number",
    "bool_type": "true or false",
    "dim_type": "a dim label or a size",
    "string_pattern_mismatch": "a safe name (ASCII letters, digits, '.', '_' or '-')",
}


def _problem(model: type[BaseModel], error: ErrorDetails) -> str:
    """``is missing 'golden[0].seed'``, ``has 'tolerance.atol' = "1e-4", not a number`` and the like."""
    where = _path(model, error["loc"]) or "(the whole document)"
    if error["type"] in ("missing", "missing_argument"):
        return f"is missing '{where}'"
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"has the unknown key '{where}'"
    shown = json.dumps(error["input"], default=str)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    expected = _KINDS.get(error["type"])
    if expected is None and error["type"] in ("literal_error", "enum"):
        expected = str(error.get("ctx", {}).get("expected", "")).replace("'", '"')
    if expected is None:
        return f"has '{where}' = {shown}: {error['msg'][0].lower()}{error['msg'][1:]}"
    return f"has '{where}' = {shown}, not {expected}"


def _path(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """``golden[0].seed``, ``files["model.onnx"].sha256``: ``loc`` read against the model's annotations,
    which tell a field name from a mapping key and skip the tags of tagged unions."""
    where, annotation = "", _unwrap(model)
    for part in loc:
        tags = _tags(annotation)
        if tags:
            annotation = _unwrap(tags.get(str(part), Any))
            continue
        origin = typing.get_origin(annotation)
        fields = getattr(annotation, "__pydantic_fields__", None) if isinstance(annotation, type) else None
        if fields is not None:  # a model or a pydantic dataclass
            field = fields.get(str(part))
            where = f"{where}.{part}" if where else str(part)
            annotation = _unwrap(field.annotation if field else Any)
        elif origin is dict:
            where += f"[{json.dumps(part)}]"
            annotation = _unwrap(typing.get_args(annotation)[1])
        else:
            where += f"[{part}]"
            annotation = _unwrap(typing.get_args(annotation)[0] if origin is list else Any)
    return where


def _unwrap(annotation: Any) -> Any:
    """The annotation without ``Annotated`` and without ``| None``."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _tags(annotation: Any) -> dict[str, Any]:
    """``{tag: member}`` of a tagged union (whose tag is a step of an error's location), else empty."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return {}
    tags = {}
    for member in typing.get_args(annotation):
        for meta in getattr(member, "__metadata__", ()):
            if isinstance(meta, Tag):
                tags[meta.tag] = member
    return tags
