"""torch.compile conversion: the in-process inductor-compiled model, and its deployable form, an
AOTInductor package (``model.pt2``: ``torch.export`` with the spec's dynamic dims, compiled ahead of time).

Both need a C++ compiler (inductor generates C++ for CPU); its absence is a clear conversion error.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from exporter._quiet import quiet
from exporter.convert._export_errors import export_reason
from exporter.convert.onnx import dynamic_shapes_for
from exporter.errors import ConversionError, first_line
from exporter.runners.base import CallConvention
from exporter.runners.pytorch import CompiledRunner
from exporter.specs.inputs import InputSpec

__all__ = [
    "AotPackage",
    "CompileMode",
    "CompileRequest",
    "CompiledModel",
    "compile_model",
    "cpp_compiler",
    "package_aot_inductor",
]


class CompileMode(StrEnum):
    """``torch.compile`` modes (``--compile-mode``, a recipe's ``[export].compile_mode``)."""

    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"
    MAX_AUTOTUNE = "max-autotune"
    MAX_AUTOTUNE_NO_CUDAGRAPHS = "max-autotune-no-cudagraphs"


@dataclass(frozen=True)
class CompileRequest:
    """``example_inputs`` are drawn at sizes ``torch.export`` can keep dynamic (>= 2 where legal)."""

    module: torch.nn.Module
    spec: InputSpec
    example_inputs: Mapping[str, torch.Tensor]
    work_dir: Path
    mode: str = "default"
    exported_program: torch.export.ExportedProgram | None = None


@dataclass
class CompiledModel:
    """The torch.compile runner (compiled once at the example shape here; new shapes compile on demand)."""

    runner: CompiledRunner
    mode: str
    compiler: str
    first_compile_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "cxx": self.compiler,
            "first_compile_seconds": round(self.first_compile_seconds, 3),
            "graphs": self.runner.graphs,
            "recompiles": self.runner.recompiles,
            "compile_seconds_total": round(self.runner.compile_seconds, 3),
            "compiles": self.runner.compiles,
        }


@dataclass
class AotPackage:
    path: Path
    convention: CallConvention
    export_seconds: float
    package_seconds: float
    warnings: list[str] = field(default_factory=list)

    def candidates(self) -> list[tuple[str, Path]]:
        return [("packaged", self.path)]

    def to_json(self) -> dict[str, Any]:
        return {
            "export_seconds": round(self.export_seconds, 3),
            "package_seconds": round(self.package_seconds, 3),
            "call": {
                "positional": list(self.convention.positional),
                "keyword": list(self.convention.keyword),
            },
        }


def cpp_compiler() -> str:
    """The C++ compiler inductor will use.

    Raises:
        ConversionError: none is installed; inductor cannot generate CPU code without one.
    """
    from torch._inductor import cpp_builder

    try:
        return cpp_builder.get_cpp_compiler()
    except Exception:
        raise ConversionError(
            "--to compile needs a C++ compiler for inductor's CPU code and none was found (tried $CXX, g++); "
            "install one (Debian/Ubuntu: apt-get install g++) or leave compile out of --to"
        ) from None


def _refuse_torchscript(module: torch.nn.Module) -> None:
    if isinstance(module, torch.jit.ScriptModule):
        raise ConversionError(
            "--to compile needs the Python model: torch.compile and torch.export cannot take a TorchScript "
            "archive; pass a state_dict with --model, or leave compile out of --to"
        )


def compile_model(
    request: CompileRequest, threads: int, progress: Callable[[str], None] | None = None
) -> CompiledModel:
    """Compile with inductor and run once at the example shape, so compile time is measured apart.

    Raises:
        ConversionError: no C++ compiler, or inductor failed on the model.
    """
    compiler = cpp_compiler()
    _refuse_torchscript(request.module)
    (progress or (lambda message: None))("torch.compile (inductor)")
    dynamic_axes = {t.name: [axis for axis, d in enumerate(t.dims) if d.label] for t in request.spec.tensors}
    runner = CompiledRunner(request.module, request.spec.names, dynamic_axes=dynamic_axes, mode=request.mode)
    torch.set_num_threads(threads)
    inputs = {n: t.numpy() for n, t in request.example_inputs.items()}
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(), quiet():
            warnings.simplefilter("ignore")
            runner.run(inputs)
    except Exception as error:
        raise ConversionError(
            f"torch.compile failed: {type(error).__name__}: {first_line(error)}; --debug shows the full error"
        ) from error
    return CompiledModel(runner, request.mode, compiler, time.perf_counter() - started)


def package_aot_inductor(
    request: CompileRequest, progress: Callable[[str], None] | None = None
) -> AotPackage:
    """``torch.export`` (dynamic dims from the spec) then ``aoti_compile_and_package`` to ``model.pt2``.

    Raises:
        ConversionError: torch.export or AOTInductor failed; the message says which and why.
    """
    from torch._inductor import aoti_compile_and_package

    cpp_compiler()
    if request.exported_program is None:
        _refuse_torchscript(request.module)
    report = progress or (lambda message: None)
    convention = CallConvention.for_module(request.module, request.spec.names)
    args, kwargs = convention.split(request.example_inputs)
    report("torch.export for AOTInductor")
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, quiet():
        warnings.simplefilter("always")
        try:
            program = request.exported_program or torch.export.export(
                request.module, args, kwargs, dynamic_shapes=dynamic_shapes_for(request.spec, convention)
            )
        except Exception as error:
            raise ConversionError(
                f"AOTInductor: torch.export failed: {export_reason(error)}; without it there is no "
                "deployable package (leave compile out of --to, or --skip compile; --debug and the report "
                "show torch's full explanation)"
            ) from error
        exported = time.perf_counter()
        report("AOTInductor compile and package")
        path = request.work_dir / "model.pt2"
        request.work_dir.mkdir(parents=True, exist_ok=True)
        # Packaged in memory: its C++ zip writer aborts the process when the disk fills mid-archive.
        package = io.BytesIO()
        try:
            aoti_compile_and_package(program, package_path=package)
        except Exception as error:
            raise ConversionError(
                f"AOTInductor packaging failed: {type(error).__name__}: {first_line(error)}"
            ) from error
        path.write_bytes(package.getbuffer())
    texts = list(dict.fromkeys(str(w.message).strip().split("\n")[0][:200] for w in caught))[:5]
    return AotPackage(path, convention, exported - started, time.perf_counter() - exported, texts)
