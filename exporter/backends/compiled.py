"""The compile target's two backends: ``torch.compile`` (inductor, in process) and its deployable form,
an AOTInductor package (``model.pt2``) loaded with ``aoti_load_package``."""

from __future__ import annotations

from collections.abc import Mapping
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
from exporter.runners.base import CallConvention, Runner
from exporter.runners.pytorch import AotInductorRunner
from exporter.specs.inputs import InputSpec, make_inputs, trace_sizes

if TYPE_CHECKING:
    from exporter.convert.compile import CompileRequest

# exporter.convert.compile imports torch: it is imported where a model is compiled, so the registry and the
# server import this module without torch.

__all__ = ["AOT_INDUCTOR", "TORCH_COMPILE"]


def _request(context: BuildContext) -> CompileRequest:
    import torch

    from exporter.convert.compile import CompileRequest

    spec, seed = context.options.spec, context.options.seed
    example = make_inputs(spec, {**spec.example_sizes, **trace_sizes(spec)}, seed)
    return CompileRequest(
        context.loaded.module,
        spec,
        {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in example.items()},
        context.work_dir,
        context.options.compile_mode,
        context.loaded.exported_program,
    )


def _build_compiled(context: BuildContext) -> BuiltBackend:
    from exporter.convert.compile import compile_model

    compiled = compile_model(_request(context), context.options.threads, progress=context.step)
    return BuiltBackend(
        candidates=[ArtifactCandidate("compiled", None, lambda: compiled.runner)],
        summary=f"torch.compile: {compiled.first_compile_seconds:.1f} s to compile",
        conversion=compiled.to_json(),
        refresh=compiled.to_json,
        detail=compiled,
    )


def _recompile_notes(result: BackendResult, spec: InputSpec) -> list[str]:
    conversion = result.conversion
    if not conversion.get("recompiles"):
        return []
    return [
        f"torch-compile: recompiled {conversion['recompiles']} times after the first compile "
        f"({conversion['graphs']} graphs, {conversion['compile_seconds_total']:.1f} s compiling): "
        "sizes outside the dynamic graph's guards (e.g. size 1, or a kernel's size range) get their own"
    ]


def _describe_compiled(entry: Mapping[str, Any]) -> list[str]:
    details = entry["conversion"]
    return [
        f"- torch.compile: inductor, mode {details['mode']}, first compile "
        f"{details['first_compile_seconds']:.1f} s, {details['graphs']} graphs "
        f"({details['recompiles']} recompiles, {details['compile_seconds_total']:.1f} s compiling in all)"
    ]


def _open_package(path: Path, context: OpenContext) -> Runner:
    names = context.input_names()
    convention = context.call or CallConvention(names)
    return AotInductorRunner(path, convention, names, threads=context.threads)


def _build_package(context: BuildContext) -> BuiltBackend:
    from exporter.convert.compile import package_aot_inductor

    package = package_aot_inductor(_request(context), progress=context.step)
    opened = OpenContext(context.options.spec, context.options.threads, package.convention)
    return BuiltBackend(
        candidates=[
            ArtifactCandidate("packaged", package.path, partial(_open_package, package.path, opened))
        ],
        summary=f"AOTInductor: {package.export_seconds + package.package_seconds:.1f} s",
        conversion=package.to_json(),
        detail=package,
    )


def _describe_package(entry: Mapping[str, Any]) -> list[str]:
    details = entry["conversion"]
    return [
        f"- AOTInductor: `{entry['file']}` (torch.export {details['export_seconds']:.1f} s, "
        f"compile and package {details['package_seconds']:.1f} s), loaded with aoti_load_package"
    ]


def _compiler_present() -> None:
    from exporter.convert.compile import cpp_compiler

    cpp_compiler()


TORCH_COMPILE = register(
    BackendSpec(
        name="torch-compile",
        staging_copies=0,
        help="torch.compile in process (nothing shipped; measured beside the others)",
        target="compile",
        file=None,
        loader=None,
        build=_build_compiled,
        open=None,
        requires=_compiler_present,
        notes=_recompile_notes,
        describe=_describe_compiled,
        keep_runner=True,
    )
)

AOT_INDUCTOR = register(
    BackendSpec(
        name="aotinductor",
        staging_extra_bytes=2 << 20,
        runtime="torch",
        platform="pytorch_aotinductor",
        requirements=("torch",),
        help="AOTInductor package (model.pt2) compiled ahead of time",
        target="compile",
        file="model.pt2",
        loader="torch._inductor.aoti_load_package",
        build=_build_package,
        open=_open_package,
        requires=_compiler_present,
        describe=_describe_package,
    )
)
