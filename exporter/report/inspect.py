"""``exporter inspect``: what is in a checkpoint or an ONNX model, before exporting or deploying it.

For a checkpoint: format, size, parameters, the leaf layers with their parameter counts and (given an input
spec) the output names and shapes. For an ONNX file: opsets, inputs and outputs with their symbolic dims,
operator counts, parameters held in initializers and size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from exporter.errors import LoadError, UsageError, first_line
from exporter.loading.checkpoint import LoadRequest, load_model
from exporter.runners.pytorch import EagerRunner, flatten_outputs
from exporter.specs.inputs import InputSpec, make_inputs

__all__ = ["summarize_checkpoint", "summarize_onnx"]


def summarize_onnx(path: Path) -> dict[str, Any]:
    """Opsets, I/O, operators and parameter count of an ONNX file (no weights are read, in the file or in
    its external data).

    ``bytes`` counts the model and its external-data files (``external_data``: name -> bytes, None for a
    missing one), so a model that keeps its weights in ``model.onnx.data`` is not shown as a few kB.

    Raises:
        LoadError: not a readable ONNX model.
    """
    import onnx

    from exporter.documents.external_data import graph_without_weights

    try:  # the graph without its tensors' values: a self-contained 2 GB model costs its graph's size
        model = onnx.ModelProto.FromString(graph_without_weights(path.resolve()))
    except Exception as error:
        raise LoadError(f"'{path}' is not a readable ONNX model: {first_line(error)}") from None
    external = _external_files(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}

    def describe(values: Any) -> list[dict[str, Any]]:
        described = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            shape = [
                d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tensor.shape.dim
            ]
            dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower() if tensor.elem_type else "?"
            described.append({"name": value.name, "dtype": dtype, "shape": shape})
        return described

    operators = Counter(
        f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        for node in graph.node
    )
    return {
        "kind": "onnx",
        "file": str(path),
        "bytes": path.stat().st_size + sum(size or 0 for size in external.values()),
        "external_data": external,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": describe(graph.input),
        "outputs": describe(graph.output),
        "nodes": len(graph.node),
        "operators": dict(operators.most_common()),
        "parameters": int(sum(int(np.prod(i.dims)) for i in graph.initializer)),
    }


def _external_files(path: Path) -> dict[str, int | None]:
    """Each external-data file ``path`` names -> its size (None when missing or not a regular file beside
    the model: inspect reports, it does not follow a name out of the model's folder)."""
    from exporter.documents.external_data import external_locations

    sizes: dict[str, int | None] = {}
    for location in sorted(external_locations(path.resolve())):  # a link named on the command line is fine
        candidate = path.parent / location
        beside = PurePosixPath(location).name == location and not candidate.is_symlink()
        sizes[location] = candidate.stat().st_size if beside and candidate.is_file() else None
    return sizes


def summarize_checkpoint(
    path: Path,
    *,
    model_ref: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    spec: InputSpec | None = None,
) -> dict[str, Any]:
    """Format, parameters and leaf layers of a checkpoint; output shapes when ``spec`` is given.

    Raises:
        ExporterError: the checkpoint cannot be loaded (exit 2), or the model fails on the spec's inputs.
    """
    loaded = load_model(LoadRequest(path, model_ref, model_kwargs or {}, trust_checkpoint))
    module = loaded.module
    layers = []
    for name, child in module.named_modules():
        if name and not any(True for _ in child.children()):
            count = sum(p.numel() for p in child.parameters(recurse=False))
            layers.append(
                {
                    "name": name,
                    "type": getattr(child, "original_name", type(child).__name__),
                    "parameters": count,
                }
            )
    summary: dict[str, Any] = {
        "kind": "checkpoint",
        "file": str(path),
        "bytes": loaded.file_size,
        "format": loaded.format.value,
        "sha256": loaded.sha256,
        "model": type(module).__name__ if not hasattr(module, "original_name") else module.original_name,
        "parameters": loaded.parameter_count,
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "buffers": sum(b.numel() for b in module.buffers()),
        "layers": layers,
        "outputs": None,
        "notes": list(loaded.notes),
    }
    if spec is not None and spec.tensors:
        eager = EagerRunner(module, spec.names)
        inputs = make_inputs(spec, spec.example_sizes, 0)
        try:
            flat = flatten_outputs(eager.call(inputs))
        except Exception as error:
            raise UsageError(f"the model fails on inputs drawn from --input: {first_line(error)}") from None
        summary["outputs"] = [
            {"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
            for name, tensor in flat
        ]
        summary["input_shapes"] = {n: list(a.shape) for n, a in inputs.items()}
    return summary
