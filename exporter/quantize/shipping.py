"""Where a lossy candidate ships, read from the backend registry: the registered lossy backend (one with
``float_source`` set) whose ``runtime`` runs the candidate, the file it ships as, and the float backend it
must beat. The quantize stage, the documents and the reports ask here instead of naming runtimes or files.

The reference is the ONNX Runtime int8 backend: the quantize stage starts from the float ONNX model it
runs, its float timings are the report's float row, and its choice is the manifest's ``int8`` entry.
"""

from __future__ import annotations

from exporter.backends.onnxruntime import INT8
from exporter.backends.registry import BackendSpec, backend, backends

__all__ = [
    "REFERENCE",
    "REFERENCE_RUNTIME",
    "candidate_label",
    "float_backend",
    "lossy_backend",
    "lossy_backends",
    "runtime_of",
    "runtime_title",
    "shipped_file",
]


def runtime_of(spec: BackendSpec) -> str:
    """``spec.runtime``, which a backend that ships a lossy model must name."""
    if spec.runtime is None:
        raise ValueError(f"backend '{spec.name}' names no runtime, so no lossy candidate can run in it")
    return spec.runtime


REFERENCE: BackendSpec = INT8
REFERENCE_RUNTIME = runtime_of(INT8)
"""What runs a candidate that names no runtime (and a report.json row from before rows named one)."""

_TITLES = {REFERENCE_RUNTIME: "ONNX Runtime"}
"""How notes name a runtime; one not listed here is named as registered."""


def lossy_backends() -> list[BackendSpec]:
    """Every registered backend that ships a lossy model, in registration order."""
    return [spec for spec in backends() if spec.float_source is not None]


def lossy_backend(runtime: str) -> BackendSpec | None:
    """The lossy backend a candidate run by ``runtime`` ships in; None when no such backend is registered
    (the candidate can be judged and timed, but never ships)."""
    return next((spec for spec in lossy_backends() if spec.runtime == runtime), None)


def float_backend(runtime: str) -> BackendSpec | None:
    """The float backend whose model a candidate run by ``runtime`` must beat."""
    lossy = lossy_backend(runtime)
    return None if lossy is None or lossy.float_source is None else backend(lossy.float_source)


def shipped_file(runtime: str) -> str | None:
    """The file a chosen candidate run by ``runtime`` ships as (``model.int8.onnx``)."""
    lossy = lossy_backend(runtime)
    return None if lossy is None else lossy.file


def candidate_label(name: str, runtime: str) -> str:
    """A candidate's name in tables and charts: its runtime in brackets unless it is the reference's."""
    return name if runtime == REFERENCE_RUNTIME else f"{name} ({runtime})"


def runtime_title(runtime: str) -> str:
    """A runtime as notes name it (``ONNX Runtime``)."""
    return _TITLES.get(runtime, runtime)
