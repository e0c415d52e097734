"""What every typed document (manifest.json, report.json) is made of: strict field types and the two kinds
of entry.

An entry only a document holds is a ``Typed`` model. An entry the code also builds and uses (a tolerance, a
parity budget, a latency row, a stage's record) is a pydantic dataclass defined where the code uses it, with
``ENTRY`` as its config, so the document and the code share one type and the schema is generated from it.
Such a dataclass is lax at the class level (pydantic's strict mode accepts only an instance of a dataclass,
never the JSON object a document holds) and strict in each field's type instead: ``Number``, ``StrictStr``,
``StrictInt``, ``StrictBool``.

Imports pydantic only, so ``verify.comparison`` and the server can use it without torch.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = ["ENTRY", "DimSize", "Number", "Typed"]


class Typed(BaseModel):
    """Strict (``"1e-4"`` is not a number, ``true`` not an integer), frozen, and unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


ENTRY = ConfigDict(extra="forbid")
"""The config of a document entry that is a pydantic dataclass: unknown keys refused; strictness is in the
field types (see the module docstring)."""


def _number(value: Any) -> int | float:
    """An int or a float, kept as given so a manifest is written back byte for byte."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


def _dim(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("dim_type", "Input should be a dim label or a size")
    return value


Number = Annotated[int | float, PlainValidator(_number), WithJsonSchema({"type": "number"})]
DimSize = Annotated[
    str | int, PlainValidator(_dim), WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]})
]
