"""What a manifest names, for ``exporter verify``: its paths confined to the folder, its artifacts opened
with the loader a deployment uses, its input spec and golden arrays read back."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.backends.onnxruntime import ONNX
from exporter.backends.registry import OpenContext, backend, call_convention
from exporter.documents.external_data import UnreadableModel, check_external_data, external_locations
from exporter.documents.manifest import CallEntry, GoldenCaseEntry, Int8Entry, Manifest, read_manifest
from exporter.errors import UsageError
from exporter.loading.safe_paths import inside_folder
from exporter.runners.base import Runner
from exporter.specs.inputs import DynamicDim, InputSpec, parse_tensor_spec

__all__ = [
    "ArtifactRef",
    "artifacts_of",
    "check_models",
    "folder_file",
    "lossy_entries",
    "model_file",
    "named_files",
    "open_artifact",
    "read_npz",
    "spec_of",
]


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact the gate opens: its backend, its file in the folder, and how it takes its inputs."""

    backend: str
    file: str
    call: CallEntry | None = None
    config: dict[str, str] | None = None


def folder_file(folder: Path, name: str) -> Path:
    """``folder / name`` for a name the manifest gives, refused unless it stays inside the folder."""
    return inside_folder(folder, name, f"manifest.json of '{folder}'")


def check_models(folder: Path, manifest: Manifest) -> None:
    """Refuse the folder before anything is loaded when one of its ONNX models keeps weights anywhere but
    in a file beside it that the manifest hashes (``documents.external_data``). A missing or unreadable
    model is left to the hash and parity checks, which fail on it.

    Raises:
        UsageError: a location outside the folder, a link, an unlisted file or ONNX Runtime's memory marker.
    """
    named_by = f"manifest.json of '{folder}'"
    for name in dict.fromkeys(named_files(manifest)):
        if name.endswith(".onnx") and folder_file(folder, name).is_file():
            with contextlib.suppress(UnreadableModel):
                check_external_data(folder, name, manifest.files, named_by)


def model_file(folder: Path, name: str) -> Path:
    """``folder / name`` as a runtime may open it: inside the folder and, for an ONNX model that keeps its
    weights outside, with each external-data file checked as ``check_models`` does (the folder's manifest
    read again: the baseline folder of a latency check is another folder) and present.

    Raises:
        UsageError: as ``check_models``.
        ValueError: the model is not a readable ONNX protobuf (a failed check, not a refused folder).
        FileNotFoundError: an external-data file is missing (the hash check fails on it too).
    """
    path = folder_file(folder, name)
    try:
        if not name.endswith(".onnx") or not path.is_file() or not external_locations(path):
            return path
    except UnreadableModel as error:
        raise ValueError(str(error)) from None  # a damaged model fails its check; the folder is not refused
    named_by = f"manifest.json of '{folder}'"
    for data in check_external_data(folder, name, read_manifest(folder).files, named_by):
        if not (folder / data).is_file():
            raise FileNotFoundError(f"its external data {data} is missing")
    return path


def artifacts_of(manifest: Manifest) -> list[ArtifactRef]:
    """Artifact entries (older manifests list only the ONNX model)."""
    if manifest.artifacts is not None:
        return [ArtifactRef(a.backend, a.file, a.call, a.config) for a in manifest.artifacts]
    return [ArtifactRef(ONNX.name, manifest.onnx.file)] if manifest.onnx is not None else []


def named_files(manifest: Manifest) -> list[str]:
    """Every path the manifest names, so all are checked before any file is hashed or loaded."""
    names = list(manifest.files)
    names += [entry.file for entry in artifacts_of(manifest)]
    for golden in manifest.golden:
        names += [golden.inputs, golden.outputs] if isinstance(golden, GoldenCaseEntry) else [golden.inputs]
    for lossy in lossy_entries(manifest):
        names += [str(ONNX.file), lossy.file]  # the budget check compares against the float ONNX model
    return names + ([manifest.generation.file] if manifest.generation is not None else [])


def lossy_entries(manifest: Manifest) -> list[Int8Entry]:
    """The lossy models the manifest lists: ``int8`` (ONNX Runtime), then the other runtimes'."""
    return ([manifest.int8] if manifest.int8 is not None else []) + list(manifest.lossy or [])


def spec_of(manifest: Manifest) -> InputSpec:
    """The input spec the artifacts were exported and verified with."""
    inputs = manifest.input_spec
    tensors = tuple(parse_tensor_spec(i.spec) for i in inputs.inputs)
    dims = tuple(DynamicDim(label, d.min, d.max, d.multiple_of) for label, d in inputs.dynamic_dims.items())
    return InputSpec(tensors, dims)


def open_artifact(folder: Path, entry: ArtifactRef, spec: InputSpec, threads: int) -> Runner:
    """A runner for one artifact, loaded with the loader a deployment uses.

    Raises:
        UsageError: the entry names a file outside ``folder`` or a symlink, an ONNX model whose external
            data fails ``model_file``, or an unknown backend.
    """
    path = model_file(folder, entry.file)
    try:
        spec_of_backend = backend(entry.backend)
    except UsageError:
        raise UsageError(f"manifest lists {entry.file} for unknown backend '{entry.backend}'") from None
    if spec_of_backend.open is None:
        raise UsageError(f"manifest lists {entry.file} for '{entry.backend}', which has no file to open")
    call = call_convention(entry.call.model_dump() if entry.call is not None else None)
    return spec_of_backend.open(path, OpenContext(spec, threads, call, entry.config))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a golden ``.npz`` (never unpickled).

    Raises:
        Exception: whatever a damaged file makes numpy or zipfile raise; the caller reports it.
    """
    with path.open("rb") as handle:  # numpy leaks its own handle when the zip directory is damaged
        loaded = np.load(handle, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with loaded:
            return {name: loaded[name] for name in loaded.files}
