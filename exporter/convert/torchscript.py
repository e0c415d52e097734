"""TorchScript conversion: ``torch.jit.script`` keeps Python control flow, ``torch.jit.trace`` records the one
path the example inputs took. The archive is saved frozen and plain; verification loads each back and ships
the first that still matches eager PyTorch.

``torch.jit.optimize_for_inference`` is not applied: it turns convolution weights into MKLDNN constants,
which ``torch.jit.save`` writes without their value, so the archive cannot be loaded back ("required keyword
attribute 'value' is undefined", pytorch/pytorch#81085; its documentation says serialization is not
supported). The parts of it that do save (conv + add + relu fusion, pre-transposed linear weights) measured
within 4% of the frozen archive on the digits demo (1 thread, batch 1/8/64), not worth a third archive. Its
speed is all in the MKLDNN kernels (1.1x/1.5x/1.7x there), which a deployment gets by calling it after
``torch.jit.load``; the report says so.

A trace that froze a branch or a loop count is caught by verification at other shapes and values, never
here: ``trace_failure_message`` turns that failure into advice.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import torch

from exporter._quiet import quiet
from exporter.convert.onnx import ExportAttempt
from exporter.errors import ConversionError, first_line
from exporter.runners.base import CallConvention
from exporter.specs.inputs import InputSpec
from exporter.stages.storage import write_through_memory

__all__ = [
    "TorchScriptConversion",
    "TorchScriptMode",
    "TorchScriptRequest",
    "convert_to_torchscript",
    "trace_failure_message",
]

_SOURCE_LINE = re.compile(r'File "([^"]+)", line (\d+)')


class TorchScriptMode(StrEnum):
    AUTO = "auto"
    SCRIPT = "script"
    TRACE = "trace"


@dataclass(frozen=True)
class TorchScriptRequest:
    module: torch.nn.Module
    spec: InputSpec
    example_inputs: Mapping[str, torch.Tensor]
    work_dir: Path
    mode: TorchScriptMode = TorchScriptMode.AUTO


@dataclass
class TorchScriptConversion:
    """Saved archives, best first, and how they were made."""

    method: str
    attempts: list[ExportAttempt]
    archives: list[tuple[str, Path]]
    skipped: dict[str, str] = field(default_factory=dict)
    tracer_warnings: list[str] = field(default_factory=list)

    def candidates(self) -> list[tuple[str, Path]]:
        """Archives to verify, best first: frozen, then as scripted/traced."""
        return list(self.archives)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "attempts": [vars(a) for a in self.attempts],
            "candidates": [label for label, _ in self.archives],
            "skipped": self.skipped,
            "tracer_warnings": self.tracer_warnings,
        }


def convert_to_torchscript(
    request: TorchScriptRequest, progress: Callable[[str], None] | None = None
) -> TorchScriptConversion:
    """Script or trace (``auto``: script, falling back to trace with the reason recorded), then save.

    Raises:
        ConversionError: neither scripting nor tracing (as the mode allows) produced a module.
    """
    report = progress or (lambda message: None)
    request.work_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(request.module, torch.jit.ScriptModule):
        attempt = ExportAttempt("script", True, 0.0, None, ["the checkpoint is already TorchScript"])
        return _save(
            request.module,
            "script",
            attempts=[attempt],
            tracer_warnings=[],
            work_dir=request.work_dir,
            report=report,
        )
    methods: list[tuple[str, Callable[[TorchScriptRequest], torch.jit.ScriptModule]]] = []
    if request.mode in (TorchScriptMode.AUTO, TorchScriptMode.SCRIPT):
        methods.append(("script", _script))
    if request.mode in (TorchScriptMode.AUTO, TorchScriptMode.TRACE):
        methods.append(("trace", _trace))
    attempts: list[ExportAttempt] = []
    for method, build in methods:
        report(f"torch.jit.{method}")
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, quiet():
            warnings.simplefilter("always")
            try:
                module = build(request)
                error = None
            except Exception as exc:
                error = _explain(exc)
        tracer = _unique(w for w in caught if issubclass(w.category, torch.jit.TracerWarning))
        attempts.append(ExportAttempt(method, error is None, time.perf_counter() - started, error, tracer))
        if error is None:
            return _save(
                module,
                method,
                attempts=attempts,
                tracer_warnings=tracer,
                work_dir=request.work_dir,
                report=report,
            )
    tried = "; ".join(f"torch.jit.{a.exporter}: {a.error}" for a in attempts)
    advice = (
        "try --torchscript-mode trace (one recorded path, checked at other shapes)"
        if request.mode is TorchScriptMode.SCRIPT
        else "rewrite that construct or drop --to torchscript"
    )
    raise ConversionError(f"TorchScript conversion failed ({tried}); {advice}")


def _script(request: TorchScriptRequest) -> torch.jit.ScriptModule:
    return torch.jit.script(request.module)


def _trace(request: TorchScriptRequest) -> torch.jit.ScriptModule:
    convention = CallConvention.for_module(request.module, request.spec.names)
    args, kwargs = convention.split(request.example_inputs)
    if kwargs:
        return torch.jit.trace(
            request.module, example_kwarg_inputs=dict(request.example_inputs), check_trace=False, strict=False
        )
    return torch.jit.trace(request.module, args, check_trace=False, strict=False)


def _save(
    module: torch.jit.ScriptModule,
    method: str,
    *,
    attempts: list[ExportAttempt],
    tracer_warnings: list[str],
    work_dir: Path,
    report: Callable[[str], None],
) -> TorchScriptConversion:
    """Save the frozen and plain archives (each loaded back later; freezing can fail)."""
    module = module.eval()
    plain = work_dir / "model.plain.ts"
    expected = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    # Through memory (when small): torch.jit.save's C++ writer aborts the process when the disk fills.
    write_through_memory(plain, lambda f: torch.jit.save(module, f), expected)
    archives: list[tuple[str, Path]] = []
    skipped: dict[str, str] = {}
    # No optimize_for_inference step: its archive does not load back (see the module docstring).
    steps: list[tuple[str, Callable[[torch.jit.ScriptModule], torch.jit.ScriptModule]]] = [
        ("frozen", torch.jit.freeze),
    ]
    for label, transform in steps:
        report(f"{label} archive")
        try:
            with warnings.catch_warnings(), quiet():
                warnings.simplefilter("ignore")
                transformed = transform(torch.jit.load(str(plain)).eval())
            path = work_dir / f"model.{label}.ts"
            write_through_memory(path, partial(torch.jit.save, transformed), expected)
        except OSError:
            raise  # a full disk is no reason to skip a variant
        except Exception as exc:
            skipped[label] = _explain(exc)
            continue
        archives.append((label, path))
        del transformed  # one loaded archive at a time
    archives.append(("scripted" if method == "script" else "traced", plain))
    return TorchScriptConversion(method, attempts, archives, skipped, tracer_warnings)


def trace_failure_message(failed_cases: list[str], tracer_warnings: list[str]) -> str:
    """Why a traced archive that fails verification almost always fails: the trace froze control flow."""
    hint = f"; the tracer warned: {tracer_warnings[0]}" if tracer_warnings else ""
    return (
        "tracing froze control flow: the traced archive diverges from eager PyTorch at "
        f"{', '.join(failed_cases)} (a branch or loop recorded for the example inputs only){hint}; "
        "use --torchscript-mode script"
    )


def _unique(caught: Any) -> list[str]:
    """First sentences of the warnings, deduplicated (tracer warnings wrap one sentence over lines)."""
    seen: list[str] = []
    for item in caught:
        flat = " ".join(str(item.message).split())
        text = (flat.split(". ")[0].rstrip(".") + ".")[:200] if flat else ""
        if text and text not in seen:
            seen.append(text)
    return seen[:5]


def _explain(error: BaseException) -> str:
    """TorchScript errors are a paragraph plus a source excerpt: keep the first line and the user's line."""
    text = str(error).strip()
    line = f"{type(error).__name__}: {first_line(error)}"[:300]
    locations = [m for m in _SOURCE_LINE.finditer(text) if "site-packages" not in m.group(1)]
    if locations:
        where = locations[-1]
        line += f" at {Path(where.group(1)).name}:{where.group(2)}"
    return line
