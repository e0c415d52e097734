"""The names an export gives: the model's and its outputs'.

The model name is written into the manifest, and ``serve``, ``package`` and the Triton repository all read
it from there, so the one default decided here holds everywhere: ``--name``, else the recipe's ``name``
(an explicit name too), else the ``--out`` folder's name, else the checkpoint's stem
(``ExportOptions.model_name``).

Output names are decided once, by the reference (eager) runner, and every document and artifact takes them
from its golden cases: the ONNX graph's outputs, the golden ``.npz`` files, the manifest, the report, the
serving signature and the Triton config. By default they are the outputs' pytree paths (``output`` for one
tensor, ``0``, ``1`` for a tuple, ``logits`` for a dict); ``--output-names`` replaces them in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from exporter.errors import UsageError

__all__ = [
    "OUTPUT_NAMES_RULE",
    "default_model_name",
    "name_outputs",
    "output_names_problem",
    "parse_output_names",
    "safe_name",
]

OUTPUT_NAMES_RULE = (
    "distinct identifiers (ASCII letters, digits, '_' and '.', not starting with a digit or '.'), as input "
    "names are"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
"""An input or output name: the ecosystem's decoders name outputs ``present.0.key``."""
_SHOWN = 60


def safe_name(text: str) -> str | None:
    """``text`` as a model name: anything but ``[A-Za-z0-9._-]`` becomes ``_``, leading dots go, at most
    100 characters; None when nothing is left."""
    return _UNSAFE.sub("_", text).lstrip(".")[:100] or None


def default_model_name(out: Path | None, checkpoint: Path) -> str:
    """The name of a model exported without ``--name``: the ``--out`` folder's (``artifacts/encoder`` ->
    ``encoder``), else the checkpoint's stem, else ``model``."""
    if out is not None:
        folder = out.name or out.resolve().name  # ``--out .`` names the model after the current folder
        if name := safe_name(folder):
            return name
    return safe_name(checkpoint.stem) or "model"


def parse_output_names(text: str) -> tuple[str, ...]:
    """``--output-names a,b,c``: the names in order, checked (``output_names_problem``).

    Raises:
        UsageError: an empty list, a name that is not an identifier, or a name given twice.
    """
    names = tuple(part.strip() for part in text.split(","))
    problem = output_names_problem(names)
    if problem is not None:
        raise UsageError(
            f"--output-names {_show(text)}: {problem}; give {OUTPUT_NAMES_RULE}, comma-separated"
        )
    return names


def output_names_problem(names: Sequence[str], input_names: Sequence[str] = ()) -> str | None:
    """What is wrong with ``names`` as output names (None when nothing is).

    They name ONNX graph outputs, golden ``.npz`` entries and Triton tensors, so each is an identifier;
    ONNX needs every value name in a graph to be unique, so none may repeat or be an input's name.
    """
    if not names:
        return "no names given"
    for name in names:
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            return f"{_show(name)} is not an identifier"
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return f"{', '.join(repeated)} given twice"
    clash = [name for name in names if name in input_names]
    if clash:
        return f"{', '.join(clash)} is also an input's name (an ONNX graph's names must be distinct)"
    return None


def name_outputs(found: Sequence[str], given: Sequence[str]) -> list[str]:
    """The output names: ``given`` (``--output-names``) when set, else ``found`` (the pytree paths).

    Raises:
        UsageError: ``given`` does not hold one name per output; the message gives the model's count.
    """
    if not given:
        return list(found)
    if len(given) != len(found):
        plural = "s" if len(found) != 1 else ""
        raise UsageError(
            f"--output-names gives {len(given)} names ({', '.join(given)}) but the model returns "
            f"{len(found)} output{plural} ({', '.join(_show(name) for name in found)}); give one name per "
            "output, in order"
        )
    return list(given)


def _show(value: object) -> str:
    """A name as it can appear in a one-line message: repr'd and cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."
