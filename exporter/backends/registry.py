"""The backend registry: one record per backend, so the pipeline, the gate and the documents iterate it
instead of naming backends. Adding a backend is one module that calls ``register`` (see
``exporter/backends/torchscript.py`` for a small one).

A record says which ``--to`` target makes the backend, the file it ships as, how it is built from the
loaded model (candidates, best first, each opened the way a deployment opens it), how a shipped file is
opened again (``exporter verify``, timing, ``exporter serve``), and what the report says about it.

The package's ``__init__`` imports the built-in backends, in listing order, before any of its modules
runs; this module imports none of them, so the registry has no import circle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from exporter._registries import Registry
from exporter.errors import UsageError
from exporter.runners.base import CallConvention, Runner
from exporter.specs.inputs import InputSpec
from exporter.verify.parity import ParityResult

if TYPE_CHECKING:
    from exporter.loading.checkpoint import LoadedModel
    from exporter.verify.parity import GoldenCase

__all__ = [
    "ArtifactCandidate",
    "BackendResult",
    "BackendSpec",
    "BuildContext",
    "BuildOptions",
    "BuiltBackend",
    "OpenContext",
    "backend",
    "backends",
    "backends_for",
    "call_convention",
    "open_file",
    "open_shipped",
    "register",
    "servable_backends",
    "targets",
    "unregister",
]


class BuildOptions(Protocol):
    """The run options a backend's ``build`` reads (``exporter.options.ExportOptions`` has them all).

    A protocol rather than ``ExportOptions`` itself: the options module reads the registry (``--to``
    targets), so the registry names only what it needs and imports nothing of the options.
    """

    @property
    def spec(self) -> InputSpec: ...
    @property
    def seed(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def opset(self) -> int | None: ...
    @property
    def onnx_exporter(self) -> str: ...
    @property
    def simplify(self) -> bool: ...
    @property
    def external_data(self) -> bool: ...
    @property
    def torchscript_mode(self) -> str: ...
    @property
    def compile_mode(self) -> str: ...


@dataclass(frozen=True)
class BuildContext:
    """What a backend's ``build`` may use: the loaded model, the run's options, the golden cases.

    ``shared`` is one dict per run in which a backend leaves a product another may reuse (the ONNX
    conversion, which OpenVINO reads), so a model is converted once per run.
    """

    loaded: LoadedModel
    options: BuildOptions
    golden: Sequence[GoldenCase]
    work_dir: Path
    step: Callable[[str], None]
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArtifactCandidate:
    """One form of a backend's artifact: ``open`` loads it the way a deployment would."""

    label: str
    path: Path | None
    open: Callable[[], Runner]


@dataclass
class BackendResult:
    """A backend's verification: every candidate tried, which one ships and the file it ships as."""

    backend: str
    target: str
    file: str | None
    parity: list[ParityResult]
    shipped: str
    path: Path | None
    conversion: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runner: Runner | None = field(default=None, repr=False)
    load_seconds: dict[str, float] = field(default_factory=dict)
    spec: BackendSpec | None = field(default=None, repr=False, compare=False)
    built: BuiltBackend | None = field(default=None, repr=False, compare=False)

    @property
    def shipped_parity(self) -> ParityResult:
        return next(p for p in self.parity if p.artifact == self.shipped)

    @property
    def passed(self) -> bool:
        return self.shipped_parity.passed

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "target": self.target,
            "file": self.file,
            "shipped": self.shipped,
            "passed": self.passed,
            "conversion": self.conversion,
            "notes": self.notes,
            "load_seconds": {label: round(seconds, 4) for label, seconds in self.load_seconds.items()},
        }


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
    the runtime settings the manifest recorded (OpenVINO's plugin config).

    ``input_names`` raises when a backend that needs the spec (a TorchScript archive) gets none.
    ``spinning=False`` lets a runtime's idle intra-op threads sleep instead of spinning (ONNX Runtime's
    ``allow_spinning``): the server's choice, whose threads share the cores with its event loop.
    """

    spec: InputSpec | None
    """None where the runtime reads its inputs' names from the file (ONNX Runtime, OpenVINO)."""
    threads: int
    call: CallConvention | None = None
    config: Mapping[str, str] | None = None
    spinning: bool = True

    def input_names(self) -> tuple[str, ...]:
        if self.spec is None:
            raise ValueError("this backend's files do not name their inputs: open it with an input spec")
        return self.spec.names


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
        staging_copies: copies of the weights the backend keeps in the staging folder at once (ONNX as
            exported and simplified: 2), for the free-space estimate before an export writes.
        staging_extra_bytes: what it stages whatever the weights (AOTInductor's compiled library).
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
    staging_copies: int = 1
    staging_extra_bytes: int = 0

    @property
    def servable(self) -> bool:
        """Whether ``exporter serve`` and ``exporter package`` can run this backend's shipped file."""
        return self.file is not None and self.runtime is not None and self.platform is not None


_REGISTRY = Registry[BackendSpec]("backend")
register = _REGISTRY.register
"""Add a backend (registration order is the order backends run and are listed in)."""
unregister = _REGISTRY.unregister
backends = _REGISTRY.entries


def backend(name: str) -> BackendSpec:
    """The registered backend called ``name``.

    Raises:
        UsageError: no such backend (a manifest or report from another exporter, say).
    """
    found = _REGISTRY.get(name)
    if found is None:
        known = ", ".join(spec.name for spec in backends())
        raise UsageError(f"unknown backend '{name}' (this exporter knows {known})")
    return found


def targets() -> tuple[str, ...]:
    """Every ``--to`` target, in registration order."""
    return tuple(dict.fromkeys(s.target for s in backends() if s.target is not None))


def backends_for(chosen_targets: Sequence[str]) -> list[BackendSpec]:
    """The backends the chosen targets make, in registration order."""
    return [s for s in backends() if s.target in chosen_targets and s.build is not None]


def servable_backends() -> dict[str, BackendSpec]:
    """Every backend ``exporter serve`` and ``exporter package`` can run, in listing order."""
    return {spec.name: spec for spec in backends() if spec.servable}


def call_convention(call: Mapping[str, Any] | None) -> CallConvention | None:
    """A recorded call convention (``{"positional": [...], "keyword": [...]}``), as manifests keep it."""
    if not call:
        return None
    keyword = tuple(call.get("keyword", ()))
    return CallConvention(tuple(call.get("positional", ())), keyword, by_name=bool(keyword))


def open_shipped(result: BackendResult, context: OpenContext) -> Runner:
    """The shipped artifact of a verified backend, opened as a deployment would (or its kept runner)."""
    spec = result.spec
    if spec is None or spec.open is None or result.path is None:
        if result.runner is None:
            raise ValueError(f"{result.backend}: nothing to run (no file and no kept runner)")
        return result.runner
    call = context.call or call_convention(result.conversion.get("call"))
    config = context.config or result.conversion.get("config")
    return spec.open(result.path, replace(context, call=call, config=config))


def open_file(name: str, path: Path, context: OpenContext) -> Runner:
    """A shipped file of backend ``name``, opened as a deployment opens it (``exporter verify``, serve).

    Raises:
        UsageError: an unknown backend, or one whose artifact lives only in process.
    """
    spec = backend(name)
    if spec.open is None:
        raise UsageError(f"backend '{name}' ships no file to open")
    return spec.open(path, context)
