"""The TorchScript backend: ``torch.jit.script`` or ``trace``, saved frozen and plain and loaded back with
``torch.jit.load``, the way a deployment runs it."""

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
from exporter.runners.base import Runner
from exporter.runners.pytorch import TorchScriptRunner
from exporter.specs.inputs import InputSpec

__all__ = ["TORCHSCRIPT"]


def _open(path: Path, context: OpenContext) -> Runner:
    return TorchScriptRunner(path, context.input_names(), threads=context.threads)


def _build(context: BuildContext) -> BuiltBackend:
    import torch

    from exporter.convert.torchscript import (
        TorchScriptMode,
        TorchScriptRequest,
        convert_to_torchscript,
        trace_failure_message,
    )

    example = context.golden[0].inputs
    request = TorchScriptRequest(
        context.loaded.module,
        context.options.spec,
        {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in example.items()},
        context.work_dir,
        TorchScriptMode(context.options.torchscript_mode),
    )
    conversion = convert_to_torchscript(request, progress=context.step)
    opened = OpenContext(context.options.spec, context.options.threads)

    def finish(result: BackendResult) -> None:
        if conversion.method == TorchScriptMode.TRACE.value and not result.passed:
            failed = [c.case for c in result.shipped_parity.cases if not c.passed]
            result.notes.append(trace_failure_message(failed, conversion.tracer_warnings))

    fallback = " after fallback" if len(conversion.attempts) > 1 else ""
    return BuiltBackend(
        candidates=[
            ArtifactCandidate(label, path, partial(_open, path, opened))
            for label, path in conversion.candidates()
        ],
        summary=f"torchscript: {conversion.method}{fallback}",
        conversion=conversion.to_json(),
        finish=finish,
        detail=conversion,
    )


def _notes(result: BackendResult, spec: InputSpec) -> list[str]:
    conversion = result.conversion
    notes = []
    attempts = conversion.get("attempts", [])
    if len(attempts) > 1:
        notes.append(
            f"torchscript: torch.jit.{attempts[0]['exporter']} failed ({attempts[0]['error']}); "
            f"fell back to torch.jit.{attempts[-1]['exporter']}"
        )
    best = result.parity[0]
    if result.shipped != best.artifact and result.passed:
        why = (best.failures() or ["outside tolerance"])[0]
        notes.append(
            f"torchscript: the {best.artifact} archive failed verification ({why}); shipped {result.shipped}"
        )
    notes.extend(
        f"torchscript: {label} archive not made: {why}"
        for label, why in conversion.get("skipped", {}).items()
    )
    return notes


def _describe(entry: Mapping[str, Any]) -> list[str]:
    details = entry["conversion"]
    return [
        f"- TorchScript: torch.jit.{details['method']}, shipped the {entry['shipped']} archive "
        f"(`{entry['file']}`, loaded back with torch.jit.load); not optimized for inference, because "
        "PyTorch cannot save that form (pytorch/pytorch#81085): call torch.jit.optimize_for_inference on the "
        "loaded module for its MKLDNN kernels"
    ]


TORCHSCRIPT = register(
    BackendSpec(
        name="torchscript",
        staging_copies=3,
        runtime="torch",
        platform="pytorch_torchscript",
        requirements=("torch",),
        help="TorchScript archive (script, or trace as fallback) run by torch.jit",
        target="torchscript",
        file="model.ts",
        loader="torch.jit.load",
        build=_build,
        open=_open,
        notes=_notes,
        describe=_describe,
    )
)
