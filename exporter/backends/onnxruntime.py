"""The ONNX backend: ``torch.onnx`` (dynamo, then the TorchScript-based exporter), checked and simplified,
run in ONNX Runtime's CPU provider; the ONNX Runtime-specific rewrite the optimize stage ships beside it when
faster; and the int8 model the quantize stage makes from it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from exporter.runners.base import Runner
from exporter.runners.onnxruntime import OnnxRuntimeRunner
from exporter.specs.inputs import InputSpec, make_inputs, trace_sizes
from exporter.verify.parity import CaseResult, ParityResult

if TYPE_CHECKING:
    import torch

    from exporter.convert.onnx import OnnxConversion, OnnxConversionRequest

# The conversion (exporter.convert.onnx) imports torch: it is imported where a model is converted, so the
# registry, the gate and the server import this module without torch.

__all__ = ["INT8", "ONNX", "alternative_graph", "conversion_of", "manifest_section", "onnx_conversion"]


def _tensors(inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    import torch

    return {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in inputs.items()}


def _request(context: BuildContext, work_dir: Path) -> OnnxConversionRequest:
    from exporter.convert.onnx import OnnxConversionRequest, OnnxExporterChoice

    options, golden = context.options, context.golden
    export_case = golden[0]
    # torch.export (and a trace) fix sizes 0 and 1: export at sizes >= 2 where the spec allows.
    sizes = {**options.spec.example_sizes, **trace_sizes(options.spec)}
    example = (
        make_inputs(options.spec, sizes, options.seed)
        if sizes != export_case.case.sizes
        else export_case.inputs
    )
    others = [g for g in golden if g.case.sizes != sizes]
    probe = next((g for g in others if g.case.name == "large"), others[-1] if others else None)
    return OnnxConversionRequest(
        module=context.loaded.module,
        spec=options.spec,
        example_inputs=_tensors(example),
        probe_inputs=_tensors(probe.inputs) if probe else None,
        output_names=export_case.output_names,
        work_dir=work_dir,
        opset=options.opset,
        exporter=OnnxExporterChoice(options.onnx_exporter),
        simplify=options.simplify,
        exported_program=context.loaded.exported_program,
        # ExportOptions.external_data (--external-data); BuildOptions does not list it yet.
        external_data=options.external_data,
    )


def _open(path: Path, context: OpenContext, name: str) -> Runner:
    return OnnxRuntimeRunner(path, context.threads, name=name, spinning=context.spinning)


def onnx_conversion(context: BuildContext) -> OnnxConversion:
    """The run's ONNX conversion: made once, by whichever backend needs it first (ONNX Runtime, or OpenVINO
    without an ONNX target), and shared through ``context.shared``."""
    from exporter.convert.onnx import convert_to_onnx

    conversion = context.shared.get("onnx")
    if conversion is None:
        work_dir = context.work_dir.parent / "onnxruntime"
        request = replace(_request(context, work_dir), inline_after_verify=True)  # see _build's finish
        conversion = convert_to_onnx(request, progress=context.step)
        context.shared["onnx"] = conversion
    return conversion


def _build(context: BuildContext) -> BuiltBackend:
    conversion = onnx_conversion(context)
    opened = OpenContext(context.options.spec, context.options.threads)
    fallback = " after fallback" if len(conversion.attempts) > 1 else ""

    def finish(result: BackendResult) -> None:
        conversion.settle()  # verified (sessions closed): self-contained again unless external data stays
        result.conversion = {**conversion.to_json(), "shipped": result.shipped}

    return BuiltBackend(
        candidates=[
            ArtifactCandidate(label, path, partial(_open, path, opened, ONNX.name))
            for label, path in conversion.candidates()
        ],
        summary=f"onnx: {conversion.exporter} exporter{fallback}, opset {conversion.opset}",
        finish=finish,
        detail=conversion,
    )


def conversion_of(result: BackendResult) -> OnnxConversion | None:
    """The ``OnnxConversion`` behind an ONNX backend's result (None for any other backend)."""
    return result.built.detail if result.spec is ONNX and result.built is not None else None


def alternative_graph(result: BackendResult, context: BuildContext) -> Callable[[], Path] | None:
    """For a dynamo-exported graph: the TorchScript-based exporter's graph, made on demand (transformer
    fusions match its patterns); None when that would be the same exporter or was not asked for."""
    from exporter.convert.onnx import OnnxExporterChoice, convert_to_onnx

    conversion = conversion_of(result)
    if conversion is None or conversion.exporter != "dynamo" or context.loaded.exported_program is not None:
        return None
    if context.options.onnx_exporter != OnnxExporterChoice.AUTO:
        return None

    def export_alternative() -> Path:
        request = replace(
            _request(context, context.work_dir.parent / "onnx-torchscript"),
            exporter=OnnxExporterChoice.TORCHSCRIPT,
        )
        return convert_to_onnx(replace(request, simplify=False)).model_path  # onnxsim hides fusable patterns

    return export_alternative


def _notes(result: BackendResult, spec: InputSpec) -> list[str]:
    conversion = conversion_of(result)
    if conversion is None:
        return []
    notes = []
    shipped, shipped_parity = result.shipped.split("+")[0], result.shipped_parity
    if len(conversion.attempts) > 1:
        failed = conversion.attempts[0]
        notes.append(
            f"the {failed.exporter} exporter failed ({failed.error}); fell back to {conversion.exporter}"
        )
    notes.extend(_frozen_dim_hint(shipped_parity, spec, conversion.exporter))
    if conversion.simplify_error:
        notes.append(f"onnxsim not applied: {conversion.simplify_error}")
    elif shipped == "exported" and shipped_parity.passed and conversion.simplified_path is not None:
        notes.append("the onnxsim-simplified model failed verification; shipped the model as exported")
    return notes


def _frozen_dim_hint(parity: ParityResult, spec: InputSpec, exporter: str) -> list[str]:
    """Name the dims whose other sizes fail while the export shape passes: the signature of a frozen dim."""
    export_case = next((c for c in parity.cases if c.case == "export"), None)
    if export_case is None or not export_case.passed:
        return []
    values_case = next((c for c in parity.cases if c.case == "values"), None)
    traced = exporter == "torchscript"  # exporter.convert.onnx.OnnxExporterChoice.TORCHSCRIPT
    if values_case is not None and not values_case.passed:
        frozen_by = "the torchscript exporter traces one path" if traced else "the graph holds one path"
        return [
            "passes at the export shape but fails at the same shape with other values: a branch or loop that "
            f"depends on input values was frozen ({frozen_by}); rewrite it with tensor ops (torch.where, "
            "torch.cond) or leave onnx out of --to"
        ]
    example = spec.example_sizes

    def changed(case: CaseResult) -> set[str]:
        return {label for label, size in case.sizes.items() if size != example[label]}

    suspects = set().union(*(changed(c) for c in parity.cases if not c.passed))
    cleared = set().union(*(changed(c) for c in parity.cases if c.passed and len(changed(c)) == 1))
    moved = sorted(suspects - cleared) or sorted(suspects)
    if not moved:
        return []
    advice = (
        "the torchscript exporter traces, freezing sizes that Python code turns into ints; try "
        "--onnx-exporter dynamo"
        if traced
        else "look for code that turns these sizes into Python ints or constants"
    )
    verb = "changes" if len(moved) == 1 else "change"
    return [
        f"passes at the export shape but fails when {', '.join(moved)} {verb}: a dim was frozen ({advice})"
    ]


def _describe(entry: Mapping[str, Any]) -> list[str]:
    conversion = entry.get("conversion") or {}
    if "attempts" not in conversion:
        return []
    attempts = "; ".join(
        f"{a['exporter']}: {'ok' if a['succeeded'] else 'failed: ' + str(a['error'])} ({a['seconds']:.1f} s)"
        for a in conversion["attempts"]
    )
    return [
        f"- ONNX: opset {conversion['opset']}, {conversion['exporter']} exporter, shipped the "
        f"{conversion['shipped']} model ({conversion['node_count']} nodes as exported, "
        f"{conversion['simplified_node_count'] or '-'} simplified)",
        f"- ONNX exporter attempts: {attempts}",
    ]


def _store(source: Path, destination: Path) -> None:
    from exporter.convert.onnx import move_onnx_model

    move_onnx_model(source, destination)


def manifest_section(results: Sequence[BackendResult]) -> dict[str, Any] | None:
    """The manifest's ``onnx`` entry (its opset, exporter and graph I/O names), when ONNX shipped."""
    result = next((r for r in results if r.spec is ONNX), None)
    conversion = conversion_of(result) if result is not None else None
    if result is None or conversion is None:
        return None
    return {
        "file": ONNX.file,
        "candidate": result.shipped,
        "opset": conversion.opset,
        "exporter": conversion.exporter,
        "input_names": conversion.input_names,
        "output_names": conversion.output_names,
    }


_onnxruntime_backend = partial(
    BackendSpec,
    runtime="onnxruntime",
    platform="onnxruntime_onnx",
    requirements=("onnxruntime",),
    triton_platform="onnxruntime_onnx",
    loader="onnxruntime.InferenceSession",
    store=_store,
)
"""A backend whose file ONNX Runtime runs: served, packaged and described to Triton alike."""

ONNX = register(
    _onnxruntime_backend(
        name="onnxruntime",
        staging_copies=2,
        help="ONNX (dynamo exporter, simplified) run by ONNX Runtime",
        target="onnx",
        file="model.onnx",
        build=_build,
        open=partial(_open, name="onnxruntime"),
        notes=_notes,
        describe=_describe,
    )
)

# The optimize stage makes it (model.onnx keeps only standard ONNX ops; this one may hold com.microsoft ops).
ORT_OPTIMIZED = register(
    _onnxruntime_backend(
        name="onnxruntime-optimized",
        triton_platform=None,  # com.microsoft fused ops tied to this ORT build: Triton gets model.onnx
        help="the ONNX model after ONNX Runtime's offline graph optimizations",
        target=None,
        file="model.ort.onnx",
        build=None,
        open=partial(_open, name="onnxruntime-optimized"),
    )
)

INT8 = register(
    _onnxruntime_backend(
        name="onnxruntime-int8",
        help="the int8 ONNX model run by ONNX Runtime",
        target=None,
        file="model.int8.onnx",
        build=None,
        open=partial(_open, name="onnxruntime-int8"),
        float_source="onnxruntime",
    )
)
