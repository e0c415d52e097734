"""The backend registry: one record per backend, so the pipeline, the gate and the documents iterate it
instead of naming backends. Adding a backend is one module that calls ``register`` (see
``exporter/backends/torchscript.py`` for a small one).

A record says which ``--to`` target makes the backend, the file it ships as, how it is built from the
loaded model (candidates, best first, each opened the way a deployment opens it), how a shipped file is
opened again (``exporter verify``, timing), and what the report says about it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.runners import CallConvention, Runner
from exporter.specs.inputs import InputSpec

if TYPE_CHECKING:
    from exporter.backends._verify import ArtifactCandidate, BackendResult
    from exporter.loading.checkpoint import LoadedModel
    from exporter.options import ExportOptions
    from exporter.verify.parity import GoldenCase

__all__ = [
    "BackendSpec",
    "BuildContext",
    "BuiltBackend",
    "OpenContext",
    "backend",
    "backends",
    "backends_for",
    "register",
    "targets",
]


@dataclass(frozen=True)
class BuildContext:
    """What a backend's ``build`` may use: the loaded model, the run's options, the golden cases.

    ``shared`` is one dict per run in which a backend leaves a product another may reuse (the ONNX
    conversion, which OpenVINO reads), so a model is converted once per run.
    """

    loaded: LoadedModel
    options: ExportOptions
    golden: Sequence[GoldenCase]
    work_dir: Path
    step: Callable[[str], None]
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuiltBackend:
    """A backend's conversion: the candidates to verify (best first) and what the report records.

    ``finish`` runs after verification (to record which candidate shipped, or explain a failure);
    ``refresh`` re-reads counters that later use changes (torch.compile's recompilations while timed);
    ``detail`` is the object the backend's own notes and sections read (``OnnxConversion``, say).
    """

    candidates: list[ArtifactCandidate]
    summary: str
    conversion: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[BackendResult], None] | None = None
    refresh: Callable[[], dict[str, Any]] | None = None
    detail: Any = None


@dataclass(frozen=True)
class OpenContext:
    """What opening a shipped artifact needs: the input names and spec, threads, the call convention, and
    the runtime settings the manifest recorded (OpenVINO's plugin config)."""

    spec: InputSpec
    threads: int
    call: CallConvention | None = None
    config: Mapping[str, str] | None = None


def _no_notes(result: BackendResult, spec: InputSpec) -> list[str]:
    return []


def _no_lines(entry: Mapping[str, Any]) -> list[str]:
    return []


def _move(source: Path, destination: Path) -> None:
    source.replace(destination)


@dataclass(frozen=True)
class BackendSpec:
    """One backend.

    Attributes:
        name: the backend's name in reports and manifests (``onnxruntime``).
        target: the ``--to`` target that makes it (``onnx``); None for one another stage makes (int8).
        file: the file it ships as in the artifacts folder; None for one that lives only in process.
        loader: how a deployment loads the file (recorded in the manifest).
        build: convert the loaded model; None when another stage makes the artifact.
        open: open a shipped file again (``exporter verify``, timing); None: only its kept runner runs.
        requires: checked before any work (a C++ compiler, say); raises an ``ExporterError``.
        notes: report notes from its verified result (fallbacks, recompilations).
        describe: report.md lines from its ``report.json`` entry.
        store: move the shipped candidate into the artifacts folder.
        keep_runner: keep the shipped candidate's runner after verification (costly to rebuild).
        float_source: for a lossy backend, the float backend it replaces (it ships only if faster).
        runtime: the package a deployment runs the shipped file with (``onnxruntime``, ``openvino``,
            ``torch``); None for a backend that lives only in process (it cannot be served or packaged).
        platform: the KServe v2 ``platform`` string the server reports (``onnxruntime_onnx``).
        requirements: the packages a bundle's server needs to run the file, besides the server's own.
        triton_platform: the Triton Inference Server ``platform`` that runs the file, where there is one.
        help: one line for the CLI's help texts (``--to``, ``--backend``).
    """

    name: str
    target: str | None
    file: str | None
    loader: str | None
    build: Callable[[BuildContext], BuiltBackend] | None
    open: Callable[[Path, OpenContext], Runner] | None
    requires: Callable[[], None] | None = None
    notes: Callable[[BackendResult, InputSpec], list[str]] = _no_notes
    describe: Callable[[Mapping[str, Any]], list[str]] = _no_lines
    store: Callable[[Path, Path], None] = _move
    keep_runner: bool = False
    float_source: str | None = None
    runtime: str | None = None
    platform: str | None = None
    requirements: tuple[str, ...] = ()
    triton_platform: str | None = None
    help: str = ""

    @property
    def servable(self) -> bool:
        """Whether ``exporter serve`` and ``exporter package`` can run this backend's shipped file."""
        return self.file is not None and self.runtime is not None and self.platform is not None


_REGISTRY: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> BackendSpec:
    """Add ``spec`` (registration order is the order backends run and are listed in)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"backend '{spec.name}' is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a backend (tests register toy backends and take them away again)."""
    _REGISTRY.pop(name, None)


def backends() -> list[BackendSpec]:
    return list(_REGISTRY.values())


def backend(name: str) -> BackendSpec:
    """The registered backend called ``name``.

    Raises:
        UsageError: no such backend (a manifest or report from another exporter, say).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise UsageError(f"unknown backend '{name}' (this exporter knows {known})") from None


def targets() -> tuple[str, ...]:
    """Every ``--to`` target, in registration order."""
    return tuple(dict.fromkeys(s.target for s in _REGISTRY.values() if s.target is not None))


def backends_for(chosen_targets: Sequence[str]) -> list[BackendSpec]:
    """The backends the chosen targets make, in registration order."""
    return [s for s in _REGISTRY.values() if s.target in chosen_targets and s.build is not None]
