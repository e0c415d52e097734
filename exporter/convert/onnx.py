"""ONNX conversion: dynamo exporter first, TorchScript-based exporter as a recorded fallback, then a full
``onnx.checker`` pass, shape inference and onnxsim.

The simplified model is only a candidate: verification decides whether it ships (``verify.parity``).
Every step works by path, so no weight is held in Python: a model keeps its weights in one ``model.onnx.data``
when asked (``--external-data``) or past 2 GB, and is self-contained otherwise (``convert.onnx_files``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import onnx
import torch

from exporter._quiet import quiet
from exporter.convert._dynamic_shapes import dynamic_shapes_for
from exporter.convert.onnx_explain import ANSI, explain, unique_warnings
from exporter.convert.onnx_files import (
    PROTOBUF_LIMIT,
    externalize,
    internalize,
    model_files,
    move_onnx_model,
    read_structure,
    remove_onnx_model,
    uses_external_data,
)
from exporter.errors import ConversionError
from exporter.runners.base import CallConvention
from exporter.runners.pytorch import flatten_outputs
from exporter.specs.inputs import InputSpec

__all__ = [
    "ExportAttempt",
    "OnnxConversion",
    "OnnxConversionRequest",
    "OnnxExporterChoice",
    "convert_to_onnx",
    "dynamic_shapes_for",
    "move_onnx_model",
]

SIMPLIFY_LIMIT = 256 * 2**20
"""Above this model size onnxsim is skipped, with the reason recorded: its C++ core peaks at about 2.3x the
model (2.2 GiB measured for a 0.94 GiB transformer encoder), which with the PyTorch model still in memory
breaks the 3x-the-weights budget; ONNX Runtime folds constants itself when it opens the model."""


class OnnxExporterChoice(StrEnum):
    AUTO = "auto"
    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


@dataclass(frozen=True)
class OnnxConversionRequest:
    """Everything the ONNX converter needs; ``probe_inputs`` (another shape) tells which output dims move."""

    module: torch.nn.Module
    spec: InputSpec
    example_inputs: Mapping[str, torch.Tensor]
    probe_inputs: Mapping[str, torch.Tensor] | None
    output_names: Sequence[str]
    work_dir: Path
    opset: int | None = None
    exporter: OnnxExporterChoice = OnnxExporterChoice.AUTO
    simplify: bool = True
    exported_program: torch.export.ExportedProgram | None = None
    external_data: bool = False
    """Keep the weights in one ``model.onnx.data`` (``--external-data``); past 2 GB they always are."""
    inline_after_verify: bool = False
    """Leave a self-contained-to-be model with its external data until ``OnnxConversion.settle``: ONNX
    Runtime opens it for verification in one copy of the weights (1.35 GiB peak inline for 0.94 GiB)."""


@dataclass
class ExportAttempt:
    """One try of one exporter, kept for the report so a fallback is never silent."""

    exporter: str
    succeeded: bool
    seconds: float
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    details: str | None = None
    """The exporter's whole message (``error`` is its one line), for the report and ``--debug``."""


@dataclass
class OnnxConversion:
    """The checked ONNX model, and the onnxsim-simplified one when onnxsim succeeded."""

    model_path: Path
    exporter: str
    attempts: list[ExportAttempt]
    opset: int
    input_names: list[str]
    output_names: list[str]
    node_count: int
    external_data: bool
    shape_inference_error: str | None = None
    simplified_path: Path | None = None
    simplified_node_count: int | None = None
    simplify_error: str | None = None
    simplify_seconds: float = 0.0
    inline_pending: bool = False

    def settle(self) -> None:
        """Bring the model inline (streaming) after verification; it stays external past 2 GB."""
        if self.inline_pending:
            self.inline_pending = False
            self.external_data = not internalize(self.model_path)

    def candidates(self) -> list[tuple[str, Path]]:
        """Models to verify, best first: simplified, then as exported."""
        found = [("simplified", self.simplified_path)] if self.simplified_path else []
        return [*found, ("exported", self.model_path)]

    def to_json(self) -> dict[str, Any]:
        return {
            "exporter": self.exporter,
            "attempts": [vars(a) for a in self.attempts],
            "opset": self.opset,
            "input_names": self.input_names,
            "output_names": self.output_names,
            "node_count": self.node_count,
            "external_data": self.external_data,
            "shape_inference_error": self.shape_inference_error,
            "simplified_node_count": self.simplified_node_count,
            "simplify_error": self.simplify_error,
            "simplify_seconds": round(self.simplify_seconds, 3),
        }


def convert_to_onnx(
    request: OnnxConversionRequest, progress: Callable[[str], None] | None = None
) -> OnnxConversion:
    """Export, check, infer shapes and simplify. Exporters are tried in order; every attempt is recorded.

    Raises:
        ConversionError: no exporter produced a model that passes ``onnx.checker``; the message names the
            operator or construct when the exporter's error does, and what to try.
    """
    request.work_dir.mkdir(parents=True, exist_ok=True)
    path = request.work_dir / "model.onnx"
    strategies: list[tuple[str, Callable[[OnnxConversionRequest, Path], None]]] = []
    if request.exporter in (OnnxExporterChoice.AUTO, OnnxExporterChoice.DYNAMO):
        strategies.append(("dynamo", _export_dynamo))
    if request.exporter in (OnnxExporterChoice.AUTO, OnnxExporterChoice.TORCHSCRIPT):
        strategies.append(("torchscript", _export_torchscript))
    report = progress or (lambda message: None)
    attempts: list[ExportAttempt] = []
    for name, strategy in strategies:
        report(f"{name} exporter")
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, quiet():
            warnings.simplefilter("always")
            try:
                strategy(request, path)
                onnx.checker.check_model(str(path), full_check=True)
                frozen = _frozen_dims(path, request.spec)
                if frozen:
                    raise RuntimeError(f"the exported graph froze dynamic dims: {', '.join(frozen)}")
                error, details = None, None
            except Exception as exc:
                error, details = explain(exc), ANSI.sub("", str(exc)).strip()[:6000] or None
        attempts.append(
            ExportAttempt(
                name, error is None, time.perf_counter() - started, error, unique_warnings(caught), details
            )
        )
        if error is None:
            break
        remove_onnx_model(path)
    else:
        tried = "; ".join(f"{a.exporter} exporter: {a.error}" for a in attempts)
        raise ConversionError(
            f"ONNX conversion failed ({tried}). Try another --opset, --onnx-exporter, or rewrite that "
            "construct; --debug shows the full error",
            details="\n\n".join(f"{a.exporter} exporter: {a.details}" for a in attempts if a.details) or None,
        )
    return _finish(request, path, attempts, report)


def _frozen_dims(path: Path, spec: InputSpec) -> list[str]:
    """Graph inputs whose spec-dynamic dims came out as fixed numbers: caught here, before verification,
    so the next exporter gets its turn (torch 2.13's dynamo exporter does this to an LSTM's sequence dim
    on the second export in a process)."""
    graph = read_structure(path).graph
    shapes = {i.name: list(i.type.tensor_type.shape.dim) for i in graph.input}
    frozen = []
    for tensor in spec.tensors:
        dims = shapes.get(tensor.name)
        if dims is None or len(dims) != len(tensor.dims):
            continue
        for axis, (dim, spec_dim) in enumerate(zip(dims, tensor.dims, strict=True)):
            if spec_dim.label and dim.HasField("dim_value"):
                frozen.append(f"{tensor.name}[{axis}] ({spec_dim.label}) = {dim.dim_value}")
    return frozen


def _finish(
    request: OnnxConversionRequest, path: Path, attempts: list[ExportAttempt], report: Callable[[str], None]
) -> OnnxConversion:
    """Shape inference, the model's final layout, then onnxsim, all by path: no weight is held in Python.

    The dynamo exporter's model arrives with external data (see ``_export_dynamo``), which makes the
    checker and shape inference free (they read the structure, not the weights: 1.85 and 1.93 GiB peak on
    a 0.94 GiB model kept inline, 0.05 GiB external); it is brought back inline here, by streaming, unless
    external data was asked for or the model is past 2 GB.
    """
    model = read_structure(path)
    result = OnnxConversion(
        model_path=path,
        exporter=attempts[-1].exporter,
        attempts=attempts,
        opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
        input_names=[i.name for i in model.graph.input],
        output_names=[o.name for o in model.graph.output],
        node_count=len(model.graph.node),
        external_data=False,
    )
    del model
    report("shape inference")
    try:
        # In place; tensors kept in the .data file stay there (C++ reads the structure, not the weights).
        onnx.shape_inference.infer_shapes_path(str(path), check_type=True, data_prop=True)
    except Exception as exc:
        result.shape_inference_error = explain(exc)
    weights = sum(f.stat().st_size for f in model_files(path))
    if request.external_data:
        externalize(path)
    result.external_data = request.external_data or weights >= PROTOBUF_LIMIT
    if not result.external_data and request.inline_after_verify:
        result.inline_pending = True
    elif not result.external_data:
        result.external_data = not internalize(path)
    if not request.simplify:
        result.simplify_error = "skipped: --no-simplify"
    elif weights > SIMPLIFY_LIMIT:
        result.simplify_error = (
            f"skipped: the model is {weights / 2**30:.2f} GiB, past {SIMPLIFY_LIMIT // 2**20} MiB; onnxsim "
            "needs about 2.3x its size on top of the process (2.2 GiB for 0.94 GiB, measured)"
        )
    else:
        report("onnxsim")
        _simplify(path, result)
    return result


def _simplify(path: Path, result: OnnxConversion) -> None:
    """onnxsim from path to path (its C++ core loads the model, weights included, once, and writes the
    result itself; no proto crosses into Python). A model that came with external data gets its simplified
    twin in one ``model.simplified.onnx.data`` too, as does one that onnxsim had to write externally."""
    import onnxsim

    started = time.perf_counter()
    target = path.with_name("model.simplified.onnx")
    try:
        with warnings.catch_warnings(), quiet():
            warnings.simplefilter("ignore")
            _, check_ok = onnxsim.simplify(str(path), output_path=str(target))
        if not check_ok:
            raise RuntimeError("onnxsim's own check found the simplified model differs")
        if result.external_data or uses_external_data(target):
            externalize(target)
        onnx.checker.check_model(str(target), full_check=True)
        result.simplified_path = target
        result.simplified_node_count = len(read_structure(target).graph.node)
    except Exception as exc:
        remove_onnx_model(target)
        result.simplify_error = explain(exc)
    result.simplify_seconds = time.perf_counter() - started


def _export_dynamo(request: OnnxConversionRequest, path: Path) -> None:
    convention = CallConvention.for_module(request.module, request.spec.names)
    args, kwargs = convention.split(request.example_inputs)
    if request.exported_program is not None:
        program = torch.onnx.export(
            request.exported_program,
            args,
            kwargs=kwargs,
            dynamo=True,
            opset_version=request.opset,
            output_names=list(request.output_names),
        )
    else:
        program = torch.onnx.export(
            request.module,
            args,
            kwargs=kwargs,
            dynamo=True,
            dynamic_shapes=dynamic_shapes_for(request.spec, convention),
            opset_version=request.opset,
            input_names=[*convention.positional, *convention.keyword],
        )
    if program is None:
        raise RuntimeError("the dynamo exporter returned no program")
    _name_outputs(program.model, request.output_names)
    # Always with external data (one model.onnx.data), written one tensor at a time: saving a 0.94 GiB model
    # inline cost 3.8 GiB on top of the process (proto, then its serialized bytes), external data nothing.
    # _finish brings the weights back inline, streaming, when the run keeps self-contained models.
    program.save(str(path), external_data=True)


def _name_outputs(model: Any, names: Sequence[str]) -> None:
    """Give graph outputs the model's pytree names, first moving aside internal values that hold them.

    (Passing ``output_names`` to the exporter collides when an internal node is already called, say,
    ``embedding``, which breaks single static assignment.)
    """
    outputs = list(model.graph.outputs)
    if len(outputs) != len(names):
        raise RuntimeError(
            f"the exported graph has {len(outputs)} outputs, the model returns {len(names)} tensors"
        )
    wanted = set(names)
    for node in model.graph:
        for value in node.outputs:
            if value.name in wanted and value not in outputs:
                value.name = f"{value.name}__internal"
    for value in model.graph.inputs:
        if value.name in wanted:
            raise RuntimeError(f"output name '{value.name}' is also an input name")
    for value, name in zip(outputs, names, strict=True):
        value.name = name


def _export_torchscript(request: OnnxConversionRequest, path: Path) -> None:
    module = request.module
    convention = CallConvention.for_module(module, request.spec.names)
    args, kwargs = convention.split(request.example_inputs)
    dynamic_axes: dict[str, dict[int, str]] = {
        t.name: {axis: d.label for axis, d in enumerate(t.dims) if d.label}
        for t in request.spec.tensors
        if any(d.label for d in t.dims)
    }
    dynamic_axes.update(_moving_output_axes(request))
    torch.onnx.export(
        module,
        args,
        str(path),
        kwargs=kwargs or None,
        dynamo=False,
        opset_version=request.opset,
        input_names=[*convention.positional, *convention.keyword],
        output_names=list(request.output_names),
        dynamic_axes=dynamic_axes,
    )
    if uses_external_data(path):  # past 2 GB: one file per tensor, gathered into model.onnx.data
        externalize(path)


def _moving_output_axes(request: OnnxConversionRequest) -> dict[str, dict[int, str]]:
    """Output axes whose size changes between the example and the probe shape are marked dynamic."""
    if request.probe_inputs is None:
        return {}
    convention = CallConvention.for_module(request.module, request.spec.names)
    shapes = []
    for inputs in (request.example_inputs, request.probe_inputs):
        args, kwargs = convention.split(inputs)
        with torch.inference_mode():
            shapes.append([t.shape for _, t in flatten_outputs(request.module(*args, **kwargs))])
    axes: dict[str, dict[int, str]] = {}
    for name, before, after in zip(request.output_names, shapes[0], shapes[1], strict=False):
        moving = {i: f"{name}_dim{i}" for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b}
        if moving:
            axes[name] = moving
    return axes
