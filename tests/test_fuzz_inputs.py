"""Property-based fuzzing of what users type: ``--input`` specs and recipe files.

Whatever the text, only an ``ExporterError`` (one line, exit 2) may come out of ``parse_tensor_spec``,
``InputSpec``, ``make_inputs`` and ``load_recipe``; any other exception is a crash the CLI would show as a
traceback and exit 3. Examples are derandomized so a failure reproduces on every run.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.errors import ExporterError
from exporter.quantize.search import QuantizeOptions
from exporter.recipe.document import _SCHEMA, load_recipe
from exporter.specs.inputs import (
    DTYPES,
    DimSpec,
    DynamicDim,
    InputSpec,
    TensorSpec,
    make_inputs,
    parse_tensor_spec,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SMALL = 3  # every dim is shrunk to at most this before drawing data

# --- grammar-shaped spec text -------------------------------------------------------------------------


def mostly(common: st.SearchStrategy[str], rare: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``common`` nine times in ten, so most examples get past the first check and reach the later ones."""
    return st.integers(0, 9).flatmap(lambda roll: rare if roll == 7 else common)


NON_ASCII_DIGITS = st.sampled_from(["\uff11", "\u0663", "\u0967", "\u09e8", "\u2082", "\u00b2", "\U0001d7d9"])
EDGE_NUMBERS = st.sampled_from(
    [
        "0",
        "-0",
        "1",
        "-1",
        "+5",
        ".5",
        "5.",
        "1e308",
        "-1e308",
        "1.7976931348623157e308",
        "1e309",
        "1e-320",
        "65504",
        "-65504",
        "65505",
        "3.4028235e38",
        "3.5e38",
        "127",
        "128",
        "255",
        "256",
        "2147483648",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "1" * 30,
        "9" * 5000,
        "nan",
        "-nan",
        "inf",
        "-inf",
        "Infinity",
        "1_000",
        "0x10",
        "1e",
        "--1",
        "",
        " ",
    ]
)
NUMBERS = mostly(
    st.one_of(
        EDGE_NUMBERS,
        st.integers(-300, 300).map(str),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats(min_value=-1e6, max_value=1e6).map(repr),
    ),
    st.one_of(NON_ASCII_DIGITS, st.text(max_size=4), st.just("\u2212" + "1")),
)
SIZES = mostly(
    st.one_of(
        st.integers(0, 6).map(str),
        st.integers(0, 10**12).map(str),
        st.sampled_from(
            ["100000000", "2147483648", "1" * 19, "1" * 5000, "-1", "+3", "1_0", "2.5", "", " 2 "]
        ),
    ),
    st.one_of(NON_ASCII_DIGITS, NUMBERS),
)
LABELS = mostly(
    st.sampled_from(["batch", "seq", "n", "_x", "b2", " batch "]),
    st.one_of(st.sampled_from(["2b", "", "x y", "\u30d0\u30c3\u30c1", "a.b"]), st.text(max_size=4)),
)
DIMS = st.lists(
    st.one_of(SIZES, st.tuples(LABELS, SIZES).map(lambda p: f"{p[0]}={p[1]}")),
    max_size=4,
).map(",".join)
RANGES = st.tuples(
    NUMBERS, mostly(st.just(".."), st.sampled_from(["...", ".", "", ":", " .. "])), NUMBERS
).map("".join)
NAMES = mostly(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,6}", fullmatch=True),
    st.one_of(st.sampled_from(["1x", "my-x", "", " x ", "x\n", "a\nb", "\u540d\u524d"]), st.text(max_size=5)),
)
DTYPE_TEXT = mostly(
    st.one_of(
        st.sampled_from(sorted(DTYPES)),
        st.sampled_from(["float", "fp16", "FP32", "double", "long", "int", "half", " int8 "]),
    ),
    st.one_of(
        st.sampled_from(["float33", "complex64", "", "\uff46loat32", "float\uff13\uff12", "int\u0666\u0664"]),
        st.text(max_size=4),
    ),
)


@st.composite
def spec_texts(draw: st.DrawFn) -> str:
    parts = [draw(NAMES), draw(DTYPE_TEXT), draw(DIMS)]
    if draw(st.booleans()):
        parts.append(draw(RANGES))
    if draw(st.integers(0, 9)) == 7:
        parts.append(draw(st.text(max_size=3)))  # an extra field
    text = ":".join(parts)
    if draw(st.integers(0, 9)) == 7:  # a stray character anywhere, often unicode
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.characters()) + text[at:]
    return text


ANY_SPEC_TEXT = st.one_of(
    spec_texts(),
    st.text(max_size=40),
    st.text(alphabet="0123456789:.,=+-eE _abxfloatinsq\uff11\u0663", max_size=40),
)


# --- checks -------------------------------------------------------------------------------------------


def _refused_cleanly(call: Callable[[], Any]) -> tuple[bool, Any]:
    """Run ``call``; an ExporterError must be one line. Anything else propagates and fails the test."""
    try:
        return True, call()
    except ExporterError as error:
        message = str(error)
        assert message.strip(), f"{type(error).__name__} with an empty message"
        assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        return False, None


def _shrunk(tensor: TensorSpec) -> TensorSpec:
    dims = tuple(DimSpec(min(d.size, SMALL), d.label) for d in tensor.dims)
    return TensorSpec(tensor.name, tensor.dtype, dims, tensor.low, tensor.high)


def _check_drawn(spec: InputSpec) -> None:
    """Data drawn at a small shape has the dtype, the shape and stays in the spec's range."""
    arrays = make_inputs(spec, spec.example_sizes, seed=0)
    assert list(arrays) == list(spec.names)
    for tensor in spec.tensors:
        values = arrays[tensor.name]
        assert values.dtype == tensor.numpy_dtype
        assert values.shape == tensor.shape(spec.example_sizes)
        if tensor.is_float:
            assert np.isfinite(values).all(), (str(tensor), values)
        if tensor.low is not None and tensor.high is not None and values.size:
            if tensor.is_float:
                top = float(np.asarray(tensor.high, dtype=tensor.numpy_dtype))
                bottom = float(np.asarray(tensor.low, dtype=tensor.numpy_dtype))
                assert bottom <= float(values.min()) and float(values.max()) <= top, str(tensor)
            else:
                assert tensor.low <= int(values.min()) and int(values.max()) < tensor.high, str(tensor)


def _check_spec_text(text: str) -> None:
    parsed, tensor = _refused_cleanly(lambda: parse_tensor_spec(text))
    if not parsed:
        return
    assert parse_tensor_spec(str(tensor)) == tensor, "str() of a parsed spec must parse back to it"
    _refused_cleanly(lambda: InputSpec((tensor,)))
    built, small = _refused_cleanly(lambda: InputSpec((_shrunk(tensor),)))
    if built:
        _check_drawn(small)


# --- specs --------------------------------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=60))
def test_random_text_is_parsed_or_refused_cleanly(text: str) -> None:
    _check_spec_text(text)


@FUZZ
@given(text=spec_texts())
def test_grammar_shaped_specs_are_parsed_or_refused_cleanly(text: str) -> None:
    _check_spec_text(text)


@FUZZ
@given(
    texts=st.lists(ANY_SPEC_TEXT, min_size=1, max_size=3),
    dims=st.lists(
        st.builds(
            DynamicDim,
            st.sampled_from(["batch", "seq", "n", "other"]),
            st.one_of(st.integers(-2, 6), st.integers()),
            st.one_of(st.none(), st.integers(-2, 12), st.integers()),
        ),
        max_size=3,
    ),
)
def test_input_specs_from_parsed_specs_are_built_or_refused_cleanly(
    texts: list[str], dims: list[DynamicDim]
) -> None:
    tensors: list[TensorSpec] = []
    for text in texts:
        parsed, tensor = _refused_cleanly(partial(parse_tensor_spec, text))
        if parsed:
            tensors.append(tensor)
    _refused_cleanly(lambda: InputSpec(tuple(tensors), tuple(dims)))
    small_dims = tuple(DynamicDim(d.label, min(d.min, SMALL), d.max) for d in dims)
    built, small = _refused_cleanly(lambda: InputSpec(tuple(_shrunk(t) for t in tensors), small_dims))
    if built:
        _check_drawn(small)


@pytest.mark.parametrize(
    "text",
    [
        "x:float64:1:-1e308..1e308",
        "x:float32:1:-1e308..1e308",
        "x:float16:2:-65504..65504",
        "x:float32:batch=100000000,1000",
        "x:float32:\uff11,\uff13",
        "x:int64:1:" + "9" * 5000 + "..1",
        "x:float32:" + "9" * 5000,
        "x:int64:2:-9223372036854775808..9223372036854775808",
    ],
)
def test_known_crashers_are_refused_or_drawn(text: str) -> None:
    """The inputs that used to escape as OverflowError, MemoryError or ValueError, pinned as examples."""
    _check_spec_text(text)


# --- recipes ------------------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
    )
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise AssertionError(type(value))


SCALARS = st.one_of(
    st.booleans(),
    st.integers(-3, 300),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([2**63 - 1, -(2**63), 0, -1, 4096, 4097]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5.0, 0.5, -0.5, 1e-4]),
    st.text(max_size=12),
    st.sampled_from(
        ["onnx", "all", "auto", "dynamo", "static", "int8", "../../x", "/abs/dir", ".", "..", "m"]
    ),
    st.sampled_from(["pkg.mod:f", "f.py:build", "x" * 5000 + ":f", "data.npz", "a\x00b:f"]),
    spec_texts(),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
SECTIONS = sorted(s for s in _SCHEMA if s)
INTS = st.one_of(
    st.integers(-2, 40), st.sampled_from([0, 1, 4096, 4097, 2**31, 2**63 - 1, -(2**63)]), st.integers()
)
FLOATS = st.one_of(
    st.floats(-2, 2),
    st.sampled_from([0, 1, 5, -1, 1e-4, 1e308, -1e308, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
)
REFS = st.sampled_from(
    ["pkg.mod:f", "f.py:build", "../up.py:f", "x" * 5000 + ":f", "a\x00b:f", "no_colon", ""]
)
PATHS = st.one_of(
    st.sampled_from(["m.pt", "data.npz", "../x", "/abs/x", "", "x" * 5000]), st.text(max_size=8)
)


def _choice_lists(*choices: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from([*choices, "bogus"]), max_size=3)


GOOD: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.sampled_from([1, 1, 0, 2, -1, 2**63 - 1]),
    "name": st.one_of(
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,8}", fullmatch=True),
        st.sampled_from(["../../x", "/some/abs/dir", "..", ".", ".git", "a/b", "a\\b", "x" * 101, "C:x"]),
        st.text(max_size=8),
    ),
    "description": st.text(max_size=20),
    "checkpoint": PATHS,
    "factory": REFS,
    "kwargs": st.dictionaries(st.text(max_size=4), SCALARS, max_size=3),
    "trust_checkpoint": st.booleans(),
    "specs": st.lists(spec_texts(), max_size=3),
    "targets": _choice_lists("onnx", "torchscript", "compile", "all"),
    "opset": INTS,
    "onnx_exporter": st.sampled_from(["auto", "dynamo", "torchscript", "Dynamo"]),
    "simplify": st.booleans(),
    "torchscript_mode": st.sampled_from(["auto", "script", "trace", "freeze"]),
    "compile_mode": st.sampled_from(["default", "reduce-overhead", "max-autotune", "fast"]),
    "not_applicable": st.dictionaries(st.sampled_from(["onnx", "compile", "tflite"]), st.text(max_size=6)),
    "atol": FLOATS,
    "rtol": FLOATS,
    "seed": INTS,
    "mode": st.sampled_from(["none", "dynamic", "static", "qat", "int8", "int4"]),
    "calibration": st.one_of(PATHS, REFS),
    "samples": INTS,
    "method": st.sampled_from(["auto", "minmax", "entropy", "percentile", "kl"]),
    "min_cosine": FLOATS,
    "min_top1": FLOATS,
    "min_sqnr_db": FLOATS,
    "max_abs": FLOATS,
    "max_float_layers": INTS,
    "qat_steps": INTS,
    "qat_lr": FLOATS,
    "qat_train": REFS,
    "eval_data": st.one_of(PATHS, REFS),
    "metric": REFS,
    "steps": _choice_lists("auto", "none", "transformer", "splitnorm", "fp16", "ort"),
    "num_heads": INTS,
    "hidden_size": INTS,
    "max_slowdown": FLOATS,
    "threads": INTS,
    "batch_dim": st.sampled_from(["batch", "seq", "", "x y"]),
    "batch_sizes": st.lists(INTS, max_size=3),
    "enabled": st.booleans(),
    "dims": st.dictionaries(
        st.sampled_from(["batch", "seq", "n", "", "a b"]),
        st.dictionaries(st.sampled_from(["min", "max", "step"]), INTS, max_size=2),
        max_size=2,
    ),
}


@st.composite
def recipe_texts(draw: st.DrawFn) -> str:
    """Mostly known keys with values of about the right type, so that most files get past the schema."""
    lines: list[str] = []

    def value_for(key: str) -> Any:
        return draw(VALUES) if key not in GOOD or draw(st.integers(0, 9)) == 7 else draw(GOOD[key])

    def keys_of(known: list[str]) -> list[str]:
        key = mostly(st.sampled_from(known), st.one_of(st.just("bogus"), st.text(max_size=4)))
        return list(dict.fromkeys(draw(st.lists(key, max_size=4))))

    for key in keys_of(list(_SCHEMA[""])):
        lines.append(f"{_toml_string(key)} = {_toml_value(value_for(key))}")
    for section in draw(
        st.lists(mostly(st.sampled_from(SECTIONS), st.just("exprot")), max_size=4, unique=True)
    ):
        lines.append(f"[{section}]")
        for key in keys_of(sorted(_SCHEMA.get(section, {"x": ...}))):
            lines.append(f"{_toml_string(key)} = {_toml_value(value_for(key))}")
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 9)) == 7:  # raw TOML fragments a careless editor might leave
        text += draw(
            st.sampled_from(["x = 0x_1\n", "[a\n", 'name = """\n', "a = [" * 3000, "\ufeff", "y = 1__0\n"])
        )
    return text


def _check_recipe(path: Path) -> None:
    loaded, recipe = _refused_cleanly(lambda: load_recipe(path))
    if not loaded:
        return
    if recipe.inputs:
        _refused_cleanly(lambda: InputSpec(recipe.inputs, recipe.dims))
    if "quantization" in recipe.settings:
        _refused_cleanly(lambda: QuantizeOptions(**recipe.settings["quantization"]))
    name = recipe.settings.get("name")
    if name is not None:
        assert Path(name).name == name and name not in (".", ".."), name


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "sub" / "recipe.toml"


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_recipes_load_or_are_refused_cleanly(recipe_path: Path, text: str) -> None:
    recipe_path.parent.mkdir(exist_ok=True)
    recipe_path.write_text(text, encoding="utf-8")
    _check_recipe(recipe_path)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_recipes_load_or_are_refused_cleanly(recipe_path: Path, data: bytes) -> None:
    recipe_path.parent.mkdir(exist_ok=True)
    recipe_path.write_bytes(data)
    _check_recipe(recipe_path)


@FUZZ
@given(text=recipe_texts())
def test_grammar_shaped_recipes_load_or_are_refused_cleanly(recipe_path: Path, text: str) -> None:
    recipe_path.parent.mkdir(exist_ok=True)
    recipe_path.write_text(text, encoding="utf-8")
    _check_recipe(recipe_path)
