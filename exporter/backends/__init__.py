"""Backends: every way a model runs, registered once and treated alike.

``_registry`` holds one ``BackendSpec`` per backend; ``_verify`` verifies any backend's candidates against
the golden cases. The built-in backends register themselves on import: ONNX Runtime (``onnxruntime.py``),
TorchScript (``torchscript.py``), torch.compile and AOTInductor (``compiled.py``), OpenVINO (``openvino.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from exporter.backends._registry import (
    BackendSpec,
    BuildContext,
    BuiltBackend,
    OpenContext,
    backend,
    backends,
    backends_for,
    register,
    targets,
    unregister,
)
from exporter.backends._verify import (
    ArtifactCandidate,
    BackendResult,
    arbitrate_float_backends,
    verify_backend,
)
from exporter.runners import CallConvention, Runner
from exporter.verify.parity import GoldenCase, Tolerance

for _builtin in ("onnxruntime", "torchscript", "compiled", "openvino"):  # registration order is listing order
    importlib.import_module(f"exporter.backends.{_builtin}")

__all__ = [
    "ArtifactCandidate",
    "BackendResult",
    "BackendSpec",
    "BuildContext",
    "BuiltBackend",
    "OpenContext",
    "arbitrate_float_backends",
    "backend",
    "backends",
    "backends_for",
    "call_convention",
    "open_shipped",
    "register",
    "targets",
    "unregister",
    "verify_backend",
    "verify_built",
]


def call_convention(call: Mapping[str, Any] | None) -> CallConvention | None:
    """A recorded call convention (``{"positional": [...], "keyword": [...]}``), as manifests keep it."""
    if not call:
        return None
    keyword = tuple(call.get("keyword", ()))
    return CallConvention(tuple(call.get("positional", ())), keyword, by_name=bool(keyword))


def verify_built(
    spec: BackendSpec,
    built: BuiltBackend,
    golden: Sequence[GoldenCase],
    tolerance: Tolerance,
    step: Callable[[str], None] | None = None,
) -> BackendResult:
    """Verify a built backend's candidates, best first; the result remembers its spec and build."""
    result = verify_backend(
        backend=spec.name,
        target=spec.target or "",
        file=spec.file,
        candidates=built.candidates,
        golden=golden,
        tolerance=tolerance,
        step=step,
        keep_runner=spec.keep_runner,
    )
    result.spec, result.built = spec, built
    result.conversion = dict(built.conversion)
    if built.finish is not None:
        built.finish(result)
    return result


def open_shipped(result: BackendResult, context: OpenContext) -> Runner:
    """The shipped artifact of a verified backend, opened as a deployment would (or its kept runner)."""
    spec = result.spec
    if spec is None or spec.open is None or result.path is None:
        if result.runner is None:
            raise ValueError(f"{result.backend}: nothing to run (no file and no kept runner)")
        return result.runner
    call = context.call or call_convention(result.conversion.get("call"))
    config = context.config or result.conversion.get("config")
    return spec.open(result.path, OpenContext(context.spec, context.threads, call, config))
