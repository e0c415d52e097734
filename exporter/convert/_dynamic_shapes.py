"""The spec's dynamic dims as ``torch.export`` dynamic shapes, shared by every torch.export caller (the
dynamo ONNX exporter, AOTInductor, PT2E quantization). Re-exported by :mod:`exporter.convert.onnx`.
"""

from __future__ import annotations

from typing import Any

import torch

from exporter.runners.base import CallConvention
from exporter.specs.inputs import DynamicDim, InputSpec

__all__ = ["dynamic_shapes_for"]


def dynamic_shapes_for(spec: InputSpec, convention: CallConvention) -> Any:
    """``torch.export`` dynamic shapes for the spec, keyed like the call (by name or by position).

    A dim with ``multiple_of`` N > 1 is the derived dim ``N * Dim('_label')``, as torch.export's own
    suggested fix writes it for code that needs a multiple (two ``MaxPool2d(ceil_mode=True)`` need 4).
    A spec's derived dim (``total=past+seq``) cannot be written as a sum of two ``Dim``s (torch.export takes
    only ``a * Dim + b``), so it is a ``Dim`` of its own bounded by its parts' sums: torch 2.13 then finds
    ``total == past + seq`` in a graph that relies on it and exports it as that sum.
    """
    taken = {d.label for d in spec.dynamic_dims} | set(spec.derived_dims)
    dims = {d.label: _torch_dim(d, taken) for d in spec.dynamic_dims}
    dims.update({label: _torch_dim(spec.dim(label), taken) for label in spec.derived_dims})
    per_input = {
        t.name: {axis: dims[d.label] for axis, d in enumerate(t.dims) if d.label} or None
        for t in spec.tensors
    }
    if convention.by_name:
        return {name: per_input[name] for name in (*convention.positional, *convention.keyword)}
    return tuple(per_input[name] for name in convention.positional)


def _torch_dim(dim: DynamicDim, taken: set[str]) -> Any:
    """``dim`` as a ``torch.export.Dim``; a multiple-of dim's base gets a name no other dim has."""
    if dim.multiple_of == 1:
        return torch.export.Dim(dim.label, min=dim.min, **({"max": dim.max} if dim.max is not None else {}))
    step, base = dim.multiple_of, f"_{dim.label}"
    while base in taken:
        base = f"_{base}"
    taken.add(base)
    bounds = {"max": dim.max // step} if dim.max is not None else {}
    return step * torch.export.Dim(base, min=dim.min // step, **bounds)  # DynamicDim rounds min, max
