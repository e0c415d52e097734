"""Calibration and evaluation samples for int8: from files, a callable, or drawn from the input spec.

Accepted sources (``--calibration``):

- an ``.npz`` file with one array per input name, samples along the first axis (an array of the input's
  rank is split along its batch axis, one of rank + 1 gives one whole input per sample);
- a directory of ``.npy`` files (single-input models), or ``.npz`` / ``.pt`` files holding one sample's
  inputs by name;
- ``package.module:callable`` (or ``file.py:callable``) returning an iterable of input dicts, or of
  ``(inputs, label)`` pairs when labels matter (a recipe's evaluation data).

Every sample is checked against the spec (names, rank, static dims, dynamic ranges, dtype kind); errors
name the input. With no source, samples are drawn from the spec, and the report warns that synthetic
calibration gives poor ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.errors import CalibrationError, UsageError, first_line
from exporter.loading.resolve import resolve_callable
from exporter.specs.inputs import InputSpec, make_inputs

__all__ = ["CalibrationMethod", "SampleSet", "load_samples"]

Sample = dict[str, np.ndarray]


class CalibrationMethod(StrEnum):
    """How static int8 ranges are found (``--calibration-method``); ``auto`` tries the others in turn."""

    AUTO = "auto"
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


@dataclass
class SampleSet:
    """Model inputs, one dict per sample (batch dim included), with optional labels and their origin."""

    samples: list[Sample]
    source: str
    synthetic: bool
    labels: list[Any] | None = None
    notes: list[str] = field(default_factory=list)

    def split(self, held_out: float = 0.25) -> tuple[SampleSet, SampleSet]:
        """Calibration and held-out evaluation sets, disjoint when there are at least two samples."""
        count = len(self.samples)
        n_eval = max(1, round(count * held_out)) if count > 1 else 0
        cut = count - n_eval
        calibration = SampleSet(self.samples[:cut] or self.samples, self.source, self.synthetic)
        evaluation = SampleSet(
            self.samples[cut:] or self.samples,
            self.source,
            self.synthetic,
            None if self.labels is None else (self.labels[cut:] or self.labels),
        )
        return calibration, evaluation


def load_samples(source: str | Path | None, spec: InputSpec, limit: int, seed: int) -> SampleSet:
    """Load up to ``limit`` samples from ``source`` (or draw them), each checked against ``spec``.

    Raises:
        CalibrationError: the source is missing or unreadable, or a sample does not fit the spec.
    """
    if limit < 1:
        raise CalibrationError(f"the sample count must be at least 1, got {limit}")
    if source is None:
        batch = spec.dim("batch") if "batch" in spec.example_sizes else None  # one sample: its smallest legal
        sizes = {**spec.example_sizes, **({"batch": max(batch.min, batch.multiple_of)} if batch else {})}
        samples = [make_inputs(spec, sizes, seed + 5000 + i) for i in range(limit)]
        return SampleSet(samples, "synthetic (drawn from the input spec)", True)
    text = str(source)
    path = Path(text)
    labels: list[Any] | None = None
    if path.is_file() and path.suffix == ".npz":
        raw = _from_npz(path, spec, limit)
    elif path.is_dir():
        raw = _from_directory(path, spec, limit)
    elif ":" in text and not path.exists():
        raw, labels = _from_callable(text, limit)
    else:
        raise CalibrationError(
            f"calibration data '{text}' not found: give an .npz file, a directory of .npy/.npz/.pt samples, "
            "or package.module:callable"
        )
    if not raw:
        raise CalibrationError(f"calibration data '{text}' holds no samples")
    samples = [_fit(sample, spec, f"'{text}' sample {index}") for index, sample in enumerate(raw)]
    return SampleSet(samples, text, False, labels)


def _from_npz(path: Path, spec: InputSpec, limit: int) -> list[dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:
        raise CalibrationError(f"cannot read calibration file '{path}': {first_line(error)}") from error
    counts = {}
    for tensor in spec.tensors:
        if tensor.name not in arrays:
            found = ", ".join(sorted(arrays)) or "nothing"
            raise CalibrationError(f"'{path}' has no array for input '{tensor.name}' (it holds {found})")
        array, rank = arrays[tensor.name], len(tensor.dims)
        if array.ndim not in (rank, rank + 1):
            raise CalibrationError(
                f"'{path}': input '{tensor.name}' has rank {array.ndim}; expected {rank} (samples along the "
                f"batch axis) or {rank + 1} (one whole input per sample)"
            )
        counts[tensor.name] = array.shape[0]
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise CalibrationError(f"'{path}': inputs have different sample counts ({detail})")
    total = min(next(iter(counts.values())), limit)
    samples = []
    for index in range(total):
        sample = {}
        for tensor in spec.tensors:
            array = arrays[tensor.name]
            sample[tensor.name] = array[index : index + 1] if array.ndim == len(tensor.dims) else array[index]
        samples.append(sample)
    return samples


def _from_directory(path: Path, spec: InputSpec, limit: int) -> list[dict[str, Any]]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz", ".pt"))[:limit]
    if not files:
        raise CalibrationError(f"calibration folder '{path}' has no .npy, .npz or .pt files")
    samples = []
    for file in files:
        try:
            if file.suffix == ".npy":
                if len(spec.tensors) != 1:
                    raise CalibrationError(
                        f"'{file}': .npy samples fit single-input models only; this model takes "
                        f"{', '.join(spec.names)}: use .npz or .pt files with one array per input"
                    )
                samples.append({spec.tensors[0].name: np.load(file, allow_pickle=False)})
            elif file.suffix == ".npz":
                with np.load(file, allow_pickle=False) as data:
                    samples.append({name: data[name] for name in data.files})
            else:
                payload = torch.load(file, map_location="cpu", weights_only=True)
                if not isinstance(payload, Mapping):
                    raise CalibrationError(f"'{file}' holds a {type(payload).__name__}, not a dict of inputs")
                samples.append(dict(payload))
        except CalibrationError:
            raise
        except Exception as error:
            raise CalibrationError(f"cannot read calibration sample '{file}': {first_line(error)}") from error
    return samples


def _from_callable(ref: str, limit: int) -> tuple[list[dict[str, Any]], list[Any] | None]:
    try:
        function = resolve_callable(ref, option="--calibration")
    except UsageError as error:
        raise CalibrationError(str(error)) from None
    try:
        produced: Iterable[Any] = function()
        items = []
        for item in produced:
            items.append(item)
            if len(items) >= limit:
                break
    except Exception as error:
        raise CalibrationError(
            f"--calibration {ref} raised {type(error).__name__}: {first_line(error)}"
        ) from error
    if items and isinstance(items[0], tuple) and len(items[0]) == 2:
        return [dict(inputs) for inputs, _ in items], [label for _, label in items]
    if items and not all(isinstance(item, Mapping) for item in items):
        raise CalibrationError(f"--calibration {ref} must yield dicts of inputs (or (inputs, label) pairs)")
    return [dict(item) for item in items], None


def _fit(sample: Mapping[str, Any], spec: InputSpec, where: str) -> Sample:
    """Check one sample against the spec and cast it to the spec's dtypes."""
    fitted: Sample = {}
    sizes: dict[str, int] = {}
    for tensor in spec.tensors:
        if tensor.name not in sample:
            raise CalibrationError(
                f"{where} has no input '{tensor.name}' (found {', '.join(sorted(sample))})"
            )
        value = sample[tensor.name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if len(array.shape) != len(tensor.dims):
            raise CalibrationError(
                f"{where}: input '{tensor.name}' has shape {list(array.shape)}, "
                f"expected rank {len(tensor.dims)} ({tensor})"
            )
        for axis, (size, dim) in enumerate(zip(array.shape, tensor.dims, strict=True)):
            if dim.label is None and size != dim.size:
                raise CalibrationError(
                    f"{where}: input '{tensor.name}' has size {size} at axis {axis}, the spec says {dim.size}"
                )
            if dim.label is not None:
                sizes.setdefault(dim.label, size)
                legal = spec.dim(dim.label)
                if not legal.allows(size):
                    raise CalibrationError(
                        f"{where}: input '{tensor.name}' dim '{dim.label}' is {size}, "
                        f"outside its range {legal}"
                    )
        expected = tensor.numpy_dtype
        kinds_match = array.dtype.kind == expected.kind or {array.dtype.kind, expected.kind} <= {"i", "u"}
        if not kinds_match:
            raise CalibrationError(
                f"{where}: input '{tensor.name}' is {array.dtype}, the spec says {tensor.dtype}"
            )
        fitted[tensor.name] = np.ascontiguousarray(array.astype(expected, copy=False))
    conflict = spec.derived_conflict(sizes)
    if conflict:
        raise CalibrationError(f"{where}: {conflict}, as the input spec says; fix the arrays' shapes")
    return fitted
