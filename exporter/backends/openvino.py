"""The OpenVINO backend: an OpenVINO IR (``model.xml`` + ``model.bin``) converted from the run's ONNX model
(or, when that does not verify, from the PyTorch module with ``ov.convert_model``), compiled for the CPU
plugin with the settings the manifest records.

The float artifact is compiled with ``INFERENCE_PRECISION_HINT=f32``: the plugin's default on a CPU with
AMX or AVX512-BF16 is bf16, which is lossy and is judged by the int8 parity budget as a candidate of its own
(``exporter/quantize/candidates.py``), never by the float tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from exporter.backends.registry import (
    ArtifactCandidate,
    BackendResult,
    BackendSpec,
    BuildContext,
    BuiltBackend,
    OpenContext,
    register,
)
from exporter.documents.openvino_settings import PRECISION_HINT, checked_config
from exporter.errors import ExporterError, UsageError, first_line
from exporter.runners.base import CallConvention, Runner
from exporter.runners.openvino import OpenVinoRunner
from exporter.specs.inputs import InputSpec, make_inputs, trace_sizes

__all__ = [
    "OPENVINO",
    "OPENVINO_LOSSY",
    "checked_config",
    "float_config",
    "openvino_config",
    "save_ir",
    "store_ir",
]


def openvino_config(threads: int, precision: str) -> dict[str, str]:
    """The CPU plugin settings an artifact is verified, timed and served with (recorded in the manifest)."""
    return {
        PRECISION_HINT: precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": str(threads),
    }


def float_config(threads: int) -> dict[str, str]:
    return openvino_config(threads, "f32")


def save_ir(model: Any, xml: Path) -> Path:
    """Write an IR with float32 weights (``save_model`` would halve them to fp16 by default: lossy)."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def store_ir(source: Path, destination: Path) -> None:
    """Move an IR's ``.xml`` and its ``.bin`` beside it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    source.with_suffix(".bin").replace(destination.with_suffix(".bin"))
    source.replace(destination)


def _from_onnx(onnx_path: Path, xml: Path) -> Path:
    """The IR of an ONNX model, read by path (OpenVINO maps its external data; no proto in Python)."""
    from exporter.convert.openvino import convert_model  # not at import: bundles carry no convert/

    if not xml.exists():
        save_ir(convert_model(str(onnx_path)), xml)
    return xml


def _from_pytorch(context: BuildContext, xml: Path) -> Path:
    """``ov.convert_model`` on the module (its own torch.export/TorchScript frontend), dynamic dims as -1."""
    import openvino as ov
    import torch

    if xml.exists():
        return xml
    spec = context.options.spec
    example = make_inputs(spec, {**spec.example_sizes, **trace_sizes(spec)}, context.options.seed)
    tensors = {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in example.items()}
    convention = CallConvention.for_module(context.loaded.module, spec.names)
    shapes = [ov.PartialShape([-1 if d.dynamic else d.size for d in tensor.dims]) for tensor in spec.tensors]
    example_input: Any = tensors if convention.by_name else tuple(tensors[n] for n in spec.names)
    from exporter.convert.openvino import convert_model

    model = convert_model(context.loaded.module, example_input=example_input, input=shapes)
    for port, name in zip(model.inputs, spec.names, strict=True):
        port.get_tensor().set_names({name})
    return save_ir(model, xml)


def _open(path: Path, context: OpenContext, name: str = "openvino") -> Runner:
    config = checked_config(context.config or float_config(context.threads))
    config["INFERENCE_NUM_THREADS"] = str(context.threads)
    return OpenVinoRunner(path, config, name=name)


def _opener(make: Any, context: OpenContext, effective: dict[str, str]) -> Runner:
    """Convert on first use (a fallback candidate is converted only when the one before it failed), then
    open; remember what the plugin really chose."""
    runner = _open(make(), context)
    assert isinstance(runner, OpenVinoRunner)
    for key in (PRECISION_HINT, "INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING"):
        try:
            effective[key] = runner.property(key)
        except Exception:  # an older plugin without the property: nothing to record
            continue
    return runner


def _build(context: BuildContext) -> BuiltBackend:
    from exporter.backends.onnxruntime import onnx_conversion

    threads = context.options.threads
    opened = OpenContext(context.options.spec, threads, None, float_config(threads))
    effective: dict[str, str] = {}
    candidates: list[ArtifactCandidate] = []
    source_note = ""
    try:
        conversion = onnx_conversion(context)
    except ExporterError as error:
        source_note = f"; no ONNX model to read ({first_line(error)})"
    else:
        for label, onnx_path in conversion.candidates():
            xml = context.work_dir / f"onnx-{label}" / "model.xml"
            make = partial(_from_onnx, onnx_path, xml)
            candidates.append(
                ArtifactCandidate(f"onnx-{label}", xml, partial(_opener, make, opened, effective))
            )
    xml = context.work_dir / "pytorch" / "model.xml"
    make = partial(_from_pytorch, context, xml)
    candidates.append(ArtifactCandidate("pytorch", xml, partial(_opener, make, opened, effective)))

    def finish(result: BackendResult) -> None:
        result.conversion = {
            "source": result.shipped,
            "config": float_config(threads),
            "effective": dict(effective),
        }

    return BuiltBackend(
        candidates=candidates,
        summary=f"openvino: IR from {candidates[0].label}{source_note}",
        finish=finish,
    )


def _notes(result: BackendResult, spec: InputSpec) -> list[str]:
    if result.shipped == "pytorch" and len(result.parity) > 1:
        return [
            "openvino: the IR read from the ONNX model failed verification; shipped ov.convert_model(module)"
        ]
    return []


def _describe(entry: Mapping[str, Any]) -> list[str]:
    conversion = entry.get("conversion") or {}
    if "config" not in conversion:
        return []
    config = ", ".join(f"{k}={v}" for k, v in conversion["config"].items())
    return [
        f"- OpenVINO: `{entry['file']}` (+ .bin) from {conversion['source']}, compiled for CPU with {config} "
        f"(effective: {', '.join(f'{k}={v}' for k, v in conversion.get('effective', {}).items()) or '-'})"
    ]


def _openvino_present() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise UsageError("--to openvino needs the openvino package: pip install openvino==2026.4.1") from None


_openvino_backend = partial(
    BackendSpec, runtime="openvino", platform="openvino_xml", requirements=("openvino",), store=store_ir
)
"""A backend whose IR the OpenVINO CPU plugin runs (model.xml beside its model.bin)."""

OPENVINO = register(
    _openvino_backend(
        name="openvino",
        help="OpenVINO IR (model.xml/.bin) run by the OpenVINO CPU plugin",
        target="openvino",
        file="model.xml",
        loader="openvino.Core().compile_model(model.xml, 'CPU', config)",
        build=_build,
        open=_open,
        requires=_openvino_present,
        notes=_notes,
        describe=_describe,
    )
)

OPENVINO_LOSSY = register(
    _openvino_backend(
        name="openvino-lossy",
        help="the int8/bf16 OpenVINO IR run by the OpenVINO CPU plugin",
        target=None,
        file="model.lossy.xml",
        loader="openvino.Core().compile_model(model.lossy.xml, 'CPU', config)",
        build=None,
        open=partial(_open, name="openvino-lossy"),
        float_source="openvino",
    )
)
"""The quantize stage's OpenVINO choice (NNCF int8, or the float IR run in bf16), judged by the budget."""
