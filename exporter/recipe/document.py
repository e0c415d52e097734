"""Recipes: a TOML file that describes a model, its inputs and dynamic dims, and the stages' settings.

Validated on load (unknown keys, wrong types and bad choices are errors naming the key), so a typo never
silently falls back to a default. CLI flags override what a recipe says. Numbers must be finite (TOML allows
``nan`` and ``inf``, which would pass every ``>=`` check or none), and ``name`` becomes a folder under
``--out``, so it must be one plain path component: ``../x`` or ``/abs`` would escape the output folder.
Callable references (``factory``, ``calibration``, ``eval_data``, ``metric``, ``qat_train``) name code that
exporter runs, so they follow one rule (``exporter.recipe.refs``): code in the recipe's own project,
``exporter.zoo``, or a package the user allows with ``--allow-package``.

Example (``recipes/digits_cnn.toml``)::

    schema_version = 1
    name = "digits_cnn"

    [model]
    checkpoint = "../examples/digits/digits_cnn.pt"     # relative to this file
    factory = "../examples/digits/model.py:build_model" # file paths relative to this file, modules to cwd
    kwargs = { width = 16 }

    [inputs]
    specs = ["image:float32:batch=1,1,8,8"]
    dims.batch = { min = 1, max = 256 }               # also multiple_of = 4: only multiples are legal

    [export]
    targets = ["onnx"]

    [verify]
    atol = 1e-4
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from exporter.backends.target_names import TARGETS as _TARGETS
from exporter.convert.compile import CompileMode
from exporter.convert.onnx import OnnxExporterChoice
from exporter.convert.torchscript import TorchScriptMode
from exporter.errors import InputSpecError, RecipeError
from exporter.hf.tasks import TASKS
from exporter.loading.safe_paths import SAFE_NAME_PATTERN
from exporter.optimize.optimizer import OPTIMIZE_STEPS
from exporter.quantize.calibration import CalibrationMethod
from exporter.quantize.types import QuantMode
from exporter.recipe.refs import ReferenceRule
from exporter.specs.inputs import DynamicDim, TensorSpec, parse_tensor_spec
from exporter.specs.naming import OUTPUT_NAMES_RULE, output_names_problem

__all__ = ["RECIPE_SCHEMA_VERSION", "Recipe", "load_recipe"]

RECIPE_SCHEMA_VERSION = 1
TARGETS = (*_TARGETS, "all")
_TASK_NAMES = (*TASKS, "text-generation-with-past")
MAX_THREADS = 4096
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)
_DIM_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN_CHARS = 120

Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_safe_name(v: Any) -> bool:
    """One path component that stays inside ``--out``: no separators, no ``..``, no hidden folder."""
    return isinstance(v, str) and _SAFE_NAME.fullmatch(v) is not None


def _show(value: Any) -> str:
    """``repr`` of a value, cut short, so an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."


def _key(key: str) -> str:
    """A TOML key, quoted, on one line (quoted keys may hold newlines or control characters)."""
    return f"'{key}'" if key.isprintable() and len(key) <= _SHOWN_CHARS else _show(key)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, str) for i in v)


def _one_of(choices: type[StrEnum]) -> tuple[Check, str]:
    """A check against the enum the CLI flag uses too, so the two lists of choices cannot drift apart."""
    values = tuple(choice.value for choice in choices)
    return (lambda v: isinstance(v, str) and v in values), f"one of {', '.join(values)}"


_SCHEMA: dict[str, dict[str, tuple[Check, str]]] = {
    "": {
        "schema_version": (_is_int, "an integer"),
        "name": (
            is_safe_name,
            "a folder name: ASCII letters, digits, '.', '_' or '-', not starting with '.', at most 100 "
            "characters",
        ),
        "description": (lambda v: isinstance(v, str), "a string"),
    },
    "model": {
        "checkpoint": (lambda v: isinstance(v, str), "a path"),
        "factory": (lambda v: isinstance(v, str) and ":" in v, "package.module:callable or file.py:callable"),
        "kwargs": (lambda v: isinstance(v, dict), "a table"),
        "trust_checkpoint": (lambda v: isinstance(v, bool), "true or false"),
        "state_dict_key": (
            lambda v: isinstance(v, str) and bool(v.strip()),
            "the key of the checkpoint's dict holding the weights, e.g. 'model_state' (a.b for nested)",
        ),
        "task": (
            lambda v: isinstance(v, str) and v in _TASK_NAMES,
            f"a Hugging Face folder's task: one of {', '.join(_TASK_NAMES)}",
        ),
    },
    "outputs": {
        "names": (
            lambda v: _is_str_list(v) and output_names_problem(v) is None,
            f"a list of the outputs' names in order: {OUTPUT_NAMES_RULE}",
        ),
    },
    "inputs": {
        "specs": (_is_str_list, "a list of NAME:DTYPE:DIMS[:LOW..HIGH] strings"),
        "dims": (lambda v: isinstance(v, dict), "a table of dim ranges"),
    },
    "export": {
        "targets": (lambda v: _is_str_list(v) and set(v) <= set(TARGETS), f"a list from {TARGETS}"),
        "skip": (lambda v: _is_str_list(v) and set(v) <= set(_TARGETS), f"a list from {_TARGETS}"),
        "opset": (lambda v: _is_int(v) and 7 <= v <= 30, "an integer opset between 7 and 30"),
        "onnx_exporter": _one_of(OnnxExporterChoice),
        "simplify": (lambda v: isinstance(v, bool), "true or false"),
        "external_data": (lambda v: isinstance(v, bool), "true or false"),
        "torchscript_mode": _one_of(TorchScriptMode),
        "compile_mode": _one_of(CompileMode),
        "not_applicable": (
            lambda v: (
                isinstance(v, dict)
                and set(v) <= set(_TARGETS)
                and all(isinstance(r, str) and r.strip() for r in v.values())
            ),
            f"a table of target = reason (targets: {', '.join(_TARGETS)})",
        ),
    },
    "verify": {
        "atol": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "rtol": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "fail_on_nonfinite": (lambda v: isinstance(v, bool), "true or false"),
        "golden_inputs": (lambda v: isinstance(v, str) and v.endswith(".npz"), "a path to an .npz file"),
        "generate_tokens": (lambda v: _is_int(v) and 1 <= v <= 4096, "an integer from 1 to 4096"),
    },
    "quantize": {
        "mode": _one_of(QuantMode),
        "calibration": (lambda v: isinstance(v, str), "a path or package.module:callable"),
        "samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "method": _one_of(CalibrationMethod),
        "min_cosine": (lambda v: _is_number(v) and -1 <= v <= 1, "a number in [-1, 1]"),
        "min_top1": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "min_sqnr_db": (_is_number, "a number (dB)"),
        "block_size": (lambda v: _is_int(v) and v >= 16 and not v & (v - 1), "a power of two >= 16"),
        "min_token_match": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "max_abs": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "max_float_layers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "qat_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "qat_lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
        "qat_train": (lambda v: isinstance(v, str) and ":" in v, "package.module:callable"),
        "eval_data": (
            lambda v: isinstance(v, str),
            "a path or package.module:callable yielding (inputs, label)",
        ),
        "metric": (lambda v: isinstance(v, str) and ":" in v, "package.module:callable(outputs, labels)"),
        "require_real_data": (lambda v: isinstance(v, bool), "true or false"),
    },
    "optimize": {
        "steps": (
            lambda v: _is_str_list(v) and set(v) <= {"auto", "none", *OPTIMIZE_STEPS},
            f"a list from auto, none, {', '.join(OPTIMIZE_STEPS)}",
        ),
        "num_heads": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: inferred from the graph)"),
        "hidden_size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: inferred from the graph)"),
        "max_slowdown": (lambda v: _is_number(v) and v >= 0, "a fraction >= 0, e.g. 0.03"),
    },
    "benchmark": {
        "threads": (lambda v: _is_int(v) and 1 <= v <= MAX_THREADS, f"an integer from 1 to {MAX_THREADS}"),
        "batch_dim": (lambda v: isinstance(v, str), "a dim label"),
        "batch_sizes": (
            lambda v: isinstance(v, list) and all(_is_int(i) and i >= 1 for i in v),
            "positive integers",
        ),
        "enabled": (lambda v: isinstance(v, bool), "true or false"),
    },
}
_DIM_KEYS = {"min", "max", "multiple_of"}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``settings`` holds only what the file sets, keyed like ``ExportOptions`` fields."""

    path: Path
    inputs: tuple[TensorSpec, ...] = ()
    dims: tuple[DynamicDim, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    not_applicable: Mapping[str, str] = field(default_factory=dict)


def load_recipe(path: Path, allow_packages: Sequence[str] = ()) -> Recipe:
    """Read and validate ``path``; its callable references must follow ``ReferenceRule`` (code in the
    recipe's project, ``exporter.zoo``, or one of ``allow_packages``).

    Raises:
        RecipeError: missing file, invalid TOML, unknown key, wrong type, a reference the rule refuses; the
            message names the key.
    """
    where = f"recipe '{path}'"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"{where} cannot be read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{where} is not valid TOML: {error}") from None
    except RecursionError:
        raise RecipeError(f"{where} nests arrays or tables too deeply to read") from None
    _validate(data, where)
    version = data.get("schema_version", RECIPE_SCHEMA_VERSION)
    if version != RECIPE_SCHEMA_VERSION:
        raise RecipeError(
            f"{where}: schema_version {version} is not supported "
            f"(this exporter reads {RECIPE_SCHEMA_VERSION})"
        )
    base = path.resolve().parent
    rule = ReferenceRule.for_recipe(path, allow_packages)
    model, inputs = data.get("model", {}), data.get("inputs", {})
    export, verify, bench = data.get("export", {}), data.get("verify", {}), data.get("benchmark", {})
    settings: dict[str, Any] = {}
    if "name" in data:
        settings["name"] = data["name"]
    if "checkpoint" in model:
        settings["checkpoint"] = Path(_join(base, model["checkpoint"]))
    if "factory" in model:
        settings["model_ref"] = _relative_ref(model["factory"], base, rule, "[model].factory")
    if "kwargs" in model:
        settings["model_kwargs"] = dict(model["kwargs"])
    if "trust_checkpoint" in model:
        settings["trust_checkpoint"] = model["trust_checkpoint"]
    if "state_dict_key" in model:
        settings["state_dict_key"] = model["state_dict_key"]
    if "task" in model:
        settings["task"] = model["task"]
    if "names" in data.get("outputs", {}):
        settings["output_names"] = tuple(data["outputs"]["names"])
    not_applicable = _export_table(export, settings, where)
    settings.update(verify)
    if "golden_inputs" in verify:
        settings["golden_inputs"] = Path(_join(base, verify["golden_inputs"]))
    settings.update({("benchmark" if k == "enabled" else k): v for k, v in bench.items()})
    settings.update(_stage_tables(data, base, rule))
    try:
        specs = tuple(parse_tensor_spec(s) for s in inputs.get("specs", []))
    except InputSpecError as error:
        raise RecipeError(f"{where}: [inputs].specs: {error}") from None
    dims = tuple(_parse_dim(label, value, where) for label, value in inputs.get("dims", {}).items())
    return Recipe(path, specs, dims, settings, data.get("description", ""), not_applicable)


def _export_table(export: Mapping[str, Any], settings: dict[str, Any], where: str) -> dict[str, str]:
    """``[export]`` into ``settings``; its ``not_applicable`` targets (returned) are skipped like ``skip``."""
    not_applicable = dict(export.get("not_applicable", {}))
    clash = set(not_applicable) & set(export.get("targets", []))
    if clash:
        raise RecipeError(
            f"{where}: [export] lists {', '.join(sorted(clash))} both in targets and not_applicable"
        )
    settings.update({k: v for k, v in export.items() if k not in ("not_applicable", "skip")})
    skipped = [*export.get("skip", []), *(t for t in not_applicable if t not in export.get("skip", []))]
    if skipped:
        settings["skip"] = skipped
    return not_applicable


def _stage_tables(data: Mapping[str, Any], base: Path, rule: ReferenceRule) -> dict[str, Any]:
    """``[quantize]`` (paths relative to the recipe) and ``[optimize]`` as nested settings."""
    settings: dict[str, Any] = {}
    quantize = dict(data.get("quantize", {}))
    for key in ("calibration", "eval_data"):
        if key in quantize:
            quantize[key] = _relative_source(quantize[key], base, rule, f"[quantize].{key}")
    for key in ("qat_train", "metric"):
        if key in quantize:
            quantize[key] = _relative_ref(quantize[key], base, rule, f"[quantize].{key}")
    if quantize:
        settings["quantization"] = quantize
    if data.get("optimize"):
        settings["optimization"] = dict(data["optimize"])
    return settings


def _validate(data: Mapping[str, Any], where: str) -> None:
    for key, value in data.items():
        if key in _SCHEMA and key != "":
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: [{key}] must be a table, got {_show(value)}")
            _check_table(key, value, where)
        elif key not in _SCHEMA[""]:
            known = ", ".join([*_SCHEMA[""], *(f"[{s}]" for s in _SCHEMA if s)])
            raise RecipeError(f"{where}: unknown key {_key(key)} (known: {known})")
        else:
            check, expected = _SCHEMA[""][key]
            if not check(value):
                raise RecipeError(f"{where}: '{key}' must be {expected}, got {_show(value)}")


def _check_table(section: str, table: Mapping[str, Any], where: str) -> None:
    schema = _SCHEMA[section]
    for key, value in table.items():
        if key not in schema:
            raise RecipeError(f"{where}: unknown key {_key(key)} in [{section}] (known: {', '.join(schema)})")
        check, expected = schema[key]
        if not check(value):
            raise RecipeError(f"{where}: [{section}].{key} must be {expected}, got {_show(value)}")


def _parse_dim(label: str, value: Any, where: str) -> DynamicDim:
    if not _DIM_LABEL.fullmatch(label):
        raise RecipeError(
            f"{where}: [inputs.dims] key {_show(label)} is not a dim label (an identifier, as in batch)"
        )
    if not isinstance(value, dict) or not set(value) <= _DIM_KEYS:
        raise RecipeError(f"{where}: [inputs.dims].{label} must be a table with min, max and/or multiple_of")
    for key, item in value.items():
        least = 1 if key == "multiple_of" else 0
        if not _is_int(item) or item < least:
            raise RecipeError(
                f"{where}: [inputs.dims].{label}.{key} must be an integer >= {least}, got {_show(item)}"
            )
    return DynamicDim(label, value.get("min", 1), value.get("max"), value.get("multiple_of", 1))


def _relative_source(source: str, base: Path, rule: ReferenceRule, key: str) -> str:
    """A data path relative to the recipe, or a callable reference (checked by ``rule``).

    Anything with a ``:`` that is not an existing file or folder is a reference: the calibration loader
    reads such text as one, so it must not slip past the rule as a "path".
    """
    if ":" in source and not _exists(base / source):
        return _relative_ref(source, base, rule, key)
    return _join(base, source)


def _exists(path: Path) -> bool:
    """``path.exists()``, False for names the OS refuses (too long, invalid): those are no data file."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _join(base: Path, relative: str) -> str:
    """``base / relative`` without ``..`` segments, so reports show readable paths."""
    return os.path.normpath(base / relative)


def _relative_ref(ref: str, base: Path, rule: ReferenceRule, key: str) -> str:
    """``file.py:callable`` references are relative to the recipe; module references stay as written.
    Either must pass ``rule``."""
    module, _, attr = ref.rpartition(":")
    joined = f"{_join(base, module)}:{attr}" if module.endswith(".py") else ref
    return rule.check(key, joined, ref)
