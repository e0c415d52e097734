"""``--calibration FILE.txt`` for an encoder folder: one sample a line, through the folder's own tokenizer.

Real text calibrates int8 ranges the way deployed traffic will drive them, which token ids drawn from the
spec do not. Each line is tokenized alone, truncated to the spec's longest sequence, then every sample is
padded to one length (the longest line kept; ``attention_mask`` 0 on the padding), because the int8
budget compares outputs row by row across samples and rows of different widths cannot be compared.
A sample holds the smallest legal batch (usually 1) of consecutive lines. Only encoders: a decoder's
lossy artifacts are judged by the tokens they generate, and its inputs (positions, the cache) are not what
a tokenizer makes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import CalibrationError, first_line
from exporter.quantize.calibration import SampleSet
from exporter.specs.dims import DynamicDim
from exporter.specs.inputs import DimSpec, InputSpec

__all__ = ["text_samples"]

_MIN_LINE_CHARS = 1 << 16
"""Characters read of one line at most (more than its tokens could use: the rest is skipped unread)."""
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0}


def text_samples(path: Path, tokenizer: Any | None, spec: InputSpec, limit: int) -> SampleSet:
    """Up to ``limit`` samples from the non-empty lines of ``path``, tokenized by ``tokenizer``.

    Raises:
        CalibrationError: no tokenizer, a missing, empty or non-UTF-8 file, fewer lines than one batch,
            or a model whose inputs are not all ``[batch, seq]`` integers the tokenizer makes.
    """
    where = f"calibration text '{path}'"
    if limit < 1:
        raise CalibrationError(f"the sample count must be at least 1, got {limit}")
    if tokenizer is None:
        raise CalibrationError(
            f"{where} needs a tokenizer to become model inputs, and the checkpoint has none: give a Hugging "
            "Face folder with its tokenizer, or an .npz file of token ids (one array per input)"
        )
    if not path.is_file():
        raise CalibrationError(f"{where} is not a file: give a UTF-8 text file, one sample a line")
    batch, seq = _token_axes(spec, tokenizer, where)
    rows = batch.min
    longest = seq.max if seq.max is not None else _model_max_length(tokenizer)
    lines = list(_lines(path, limit * rows, max(_MIN_LINE_CHARS, 16 * longest), where))
    if len(lines) < rows:
        raise CalibrationError(
            f"{where} holds {len(lines)} non-empty line(s); the model's smallest batch is {rows}: write at "
            f"least {rows} lines, one sample a line"
        )
    lines = lines[: len(lines) // rows * rows]
    try:
        encoded = tokenizer(lines, truncation=True, max_length=longest, padding=False)
        columns = {name: [list(map(int, ids)) for ids in encoded[name]] for name in spec.names}
    except Exception as error:
        raise CalibrationError(f"the tokenizer fails on {where}: {first_line(error)}") from None
    lengths = [len(ids) for ids in columns[spec.names[0]]]
    width = _padded_width(max(lengths), seq)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    padded = {
        name: _pad(values, width, _PAD_VALUES.get(name, pad_id if isinstance(pad_id, int) else 0))
        for name, values in columns.items()
    }
    samples = [
        {name: np.ascontiguousarray(array[start : start + rows]) for name, array in padded.items()}
        for start in range(0, len(lines), rows)
    ]
    cut = sum(1 for length in lengths if length >= longest)
    notes = [f"{cut} line(s) reached the {longest}-token limit and were truncated"] if cut else []
    source = f"{path} ({len(lines)} lines through the folder's tokenizer, padded to {width} tokens)"
    return SampleSet(samples, source, False, notes=notes)


def _token_axes(spec: InputSpec, tokenizer: Any, where: str) -> tuple[DynamicDim, DynamicDim]:
    """The legal batch and sequence sizes shared by every input, each one a ``[batch, seq]`` integer the
    tokenizer makes."""
    made = set(getattr(tokenizer, "model_input_names", ()) or ())
    missing = [name for name in spec.names if name not in made]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CalibrationError(
            f"{where} gives only what the tokenizer makes ({', '.join(sorted(made)) or 'nothing'}); this "
            f"model also takes {shown}: text calibration is for encoders, give an .npz file with every input"
        )
    axes: tuple[DynamicDim, DynamicDim] | None = None
    for tensor in spec.tensors:
        if len(tensor.dims) != 2 or tensor.numpy_dtype.kind not in "iu":
            raise CalibrationError(
                f"{where}: input '{tensor.name}' is {tensor}, not [batch, seq] integers a tokenizer makes"
            )
        legal = (_legal(spec, tensor.dims[0]), _legal(spec, tensor.dims[1]))
        if axes is not None and legal != axes:
            raise CalibrationError(
                f"{where}: input '{tensor.name}' ({tensor}) differs in shape from the others"
            )
        axes = legal
    assert axes is not None  # an InputSpec has at least one tensor
    return axes


def _legal(spec: InputSpec, dim: DimSpec) -> DynamicDim:
    if dim.label is None:
        return DynamicDim("static", dim.size, dim.size)
    return spec.dim(dim.label)


def _model_max_length(tokenizer: Any) -> int:
    """The tokenizer's own limit when the spec's sequence is unbounded (a huge sentinel means none: 512)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1 << 20 else 512


def _padded_width(longest: int, seq: DynamicDim) -> int:
    """The smallest legal sequence size holding the longest line (lines were truncated to the largest)."""
    width = max(longest, seq.min)
    width += -width % seq.multiple_of
    return width if seq.max is None else min(width, seq.max)


def _pad(rows: Sequence[list[int]], width: int, value: int) -> np.ndarray:
    array = np.full((len(rows), width), value, dtype=np.int64)
    for index, ids in enumerate(rows):
        array[index, : min(len(ids), width)] = ids[:width]
    return array


def _lines(path: Path, limit: int, chars: int, where: str) -> Iterator[str]:
    """The first ``limit`` non-empty lines, stripped, each read up to ``chars`` characters (the rest of a
    longer line is skipped in chunks, so no line is held whole)."""
    kept = 0
    number = 0
    try:
        with path.open(encoding="utf-8-sig", newline=None) as handle:
            while kept < limit:
                chunk = handle.readline(chars)
                if not chunk:
                    break
                number += 1
                rest = chunk
                while rest and not rest.endswith("\n"):
                    rest = handle.readline(chars)
                text = chunk.strip()
                if text:
                    kept += 1
                    yield text
    except UnicodeDecodeError as error:
        raise CalibrationError(
            f"{where} is not UTF-8 text ({first_line(error)}): save it as UTF-8, one sample a line"
        ) from None
    except OSError as error:
        raise CalibrationError(f"cannot read {where}: {first_line(error)}") from None
    if number == 0 or kept == 0:
        raise CalibrationError(f"{where} holds no text: write one sample a line (empty lines are skipped)")
