"""Which shipped artifact a server runs, the files it needs, and the integrity check before it listens.

What a backend's file is served with (its runtime, its KServe platform) is the backend registry's
(``BackendSpec.runtime``, ``platform``, ``servable``), so a registered backend is served with no change here.
Imports neither torch nor ONNX: a bundle for an ONNX artifact runs this module without them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from exporter.backends.onnxruntime import INT8
from exporter.backends.registry import BackendSpec, servable_backends
from exporter.documents.external_data import UnreadableModel, check_external_data
from exporter.documents.files import sha256_file
from exporter.documents.manifest import CallEntry, GoldenCaseEntry, Manifest
from exporter.errors import UsageError
from exporter.loading.safe_paths import inside_folder, read_inside
from exporter.quantize.budget import ParityBudget
from exporter.serving.decoder import decoder_files

__all__ = [
    "ServedArtifact",
    "check_integrity",
    "choose_artifact",
    "copy_checked",
    "required_files",
    "shipped_artifacts",
]


@dataclass(frozen=True)
class ServedArtifact:
    """One shipped artifact as a server opens it.

    ``budget`` is set for lossy artifacts (int8, bf16): their start-up check is the int8 parity budget,
    not the float tolerance.
    """

    backend: str
    file: str
    files: tuple[str, ...]
    runtime: str
    config: dict[str, str] | None = None
    call: CallEntry | None = None
    budget: ParityBudget | None = None

    @property
    def lossy(self) -> bool:
        return self.budget is not None

    @property
    def platform(self) -> str:
        """The KServe v2 ``platform`` string (``onnxruntime_onnx``, ``openvino_xml``, ...)."""
        return str(servable_backends()[self.backend].platform)


def _served(
    manifest: Manifest, spec: BackendSpec, file: str, config: dict[str, str] | None
) -> ServedArtifact:
    return ServedArtifact(spec.name, file, _files_of(manifest, file), str(spec.runtime), config)


def _files_of(manifest: Manifest, file: str) -> tuple[str, ...]:
    """The artifact file and what it loads beside it: an IR's ``.bin``, an ONNX model's external data."""
    companions = [file]
    if file.endswith(".xml"):
        companions.append(file.removesuffix(".xml") + ".bin")
    companions += sorted(name for name in manifest.files if name.startswith(f"{file}."))
    return tuple(companions)


def shipped_artifacts(manifest: Manifest) -> dict[str, ServedArtifact]:
    """Every servable artifact the manifest lists as verified (float) or shipped within budget (lossy)."""
    servable = servable_backends()
    found: dict[str, ServedArtifact] = {}
    for entry in manifest.artifacts or []:
        if entry.backend in servable and entry.verified:
            served = _served(manifest, servable[entry.backend], entry.file, entry.config)
            found[entry.backend] = replace(served, call=entry.call)
    if manifest.int8 is not None:
        int8 = _served(manifest, INT8, manifest.int8.file, None)
        found[INT8.name] = replace(int8, budget=manifest.int8.budget)
    for lossy in manifest.lossy or []:
        backend = lossy.backend or INT8.name
        if backend in servable:
            served = _served(manifest, servable[backend], lossy.file, lossy.config)
            found[backend] = replace(served, budget=lossy.budget)
    return found


def choose_artifact(folder: Path, manifest: Manifest, requested: str | None) -> ServedArtifact:
    """``requested``, or the fastest shipped artifact as report.json's latency table ranks them
    (geometric mean of p50 over the batch sizes every candidate was timed at).

    Raises:
        UsageError: an unknown backend, or one this folder does not ship.
    """
    shipped = shipped_artifacts(manifest)
    order = list(servable_backends())
    if requested is not None:
        if requested not in order:
            raise UsageError(
                f"--backend {requested!r} is not a backend exporter serves; choose one of {', '.join(order)}"
            )
        if requested not in shipped:
            available = ", ".join(shipped) or "none"
            raise UsageError(
                f"--backend {requested} is not shipped in '{folder}' (it ships: {available}); "
                "export it with that target, or pick a shipped one"
            )
        return shipped[requested]
    if not shipped:
        raise UsageError(
            f"'{folder}' ships no artifact a server can open (verified ONNX, OpenVINO, TorchScript or "
            "AOTInductor); re-export it with --to onnx"
        )
    ranked = sorted(shipped, key=lambda name: (_latency_rank(folder).get(name, math.inf), order.index(name)))
    return shipped[ranked[0]]


def _latency_rank(folder: Path) -> dict[str, float]:
    """Backend -> geometric mean p50 over the batch labels all backends share, from report.json (if any).

    Read as any document of a folder from elsewhere: a link, a FIFO or a huge file is refused, not read.
    """
    try:
        report = json.loads(read_inside(folder, "report.json", f"report.json of '{folder}'"))
        rows = [r for r in report["latency"] if isinstance(r.get("p50_ms"), int | float) and r["p50_ms"] > 0]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    by_backend: dict[str, dict[str, float]] = {}
    for row in rows:
        by_backend.setdefault(str(row["backend"]), {})[str(row["label"])] = float(row["p50_ms"])
    servable = servable_backends()
    served = {b: labels for b, labels in by_backend.items() if b in servable}
    if not served:
        return {}
    common = set.intersection(*(set(labels) for labels in served.values()))
    return {
        backend: math.exp(sum(math.log(labels[label]) for label in common) / len(common))
        if common
        else math.inf
        for backend, labels in served.items()
    }


def golden_cases(manifest: Manifest) -> list[GoldenCaseEntry]:
    return [entry for entry in manifest.golden if isinstance(entry, GoldenCaseEntry)]


def required_files(manifest: Manifest, artifact: ServedArtifact) -> list[str]:
    """What a server of ``artifact`` reads: its files, every golden case's inputs and outputs, and a
    decoder's tokenizer and golden generations."""
    names = list(artifact.files)
    for case in golden_cases(manifest):
        names += [case.inputs, case.outputs]
    return names + decoder_files(manifest)


def check_integrity(
    folder: Path, manifest: Manifest, artifact: ServedArtifact, purpose: str = "serve"
) -> int:
    """Refuse a folder whose files do not match the manifest, as ``exporter verify``'s hash check does.

    Every file the server reads must be present and match. A listed file it does not read may be absent
    (a bundle carries only its backend's files) but, when present, must match too. Returns the number
    of files checked.

    Raises:
        UsageError: a path outside the folder, a required file missing or unlisted, or any hash mismatch.
    """
    return _check(folder, manifest, artifact, purpose, None)


def copy_checked(folder: Path, manifest: Manifest, artifact: ServedArtifact, into: Path) -> int:
    """``check_integrity``, except that every file the server reads is copied into ``into`` (same relative
    paths) and the hash is taken of the bytes written there, as they are read: the server then loads the
    copy, so a file swapped in ``folder`` after the check is never what runs. Returns the files checked.

    Raises:
        UsageError: as ``check_integrity``.
    """
    return _check(folder, manifest, artifact, "serve", into)


def _check(
    folder: Path, manifest: Manifest, artifact: ServedArtifact, purpose: str, into: Path | None
) -> int:
    named_by = f"manifest.json of '{folder}'"
    required = required_files(manifest, artifact)
    with contextlib.suppress(UnreadableModel):  # a damaged model is the hash check's to report, below
        _check_external_data(folder, manifest, artifact, purpose)
    if into is not None:
        _check_room(folder, required, into)
    checked = 0
    for name in dict.fromkeys([*required, *manifest.files]):
        path = inside_folder(folder, name, named_by)
        recorded = manifest.files.get(name)
        if recorded is None:
            raise UsageError(f"{named_by} does not list '{name}' with a sha256; refusing to {purpose} it")
        if not path.exists():
            if name in required:
                raise UsageError(
                    f"'{folder}' is missing {name}, which the {artifact.backend} server needs; "
                    "re-export or re-package the folder"
                )
            continue
        if into is not None and name in required:
            digest = _copy_hashed(path, inside_folder(into, name, "the server's private copy"))
        else:
            digest = sha256_file(path)
        if digest != recorded.sha256:
            raise UsageError(
                f"'{folder}/{name}' was modified after export (sha256 {digest[:12]}... != manifest "
                f"{recorded.sha256[:12]}...); refusing to {purpose} a folder that fails exporter verify's "
                "integrity check"
            )
        checked += 1
    # again on what the server loads (the checked copy) and now unsuppressed: a hashed model whose
    # locations cannot be read is refused, not handed to ONNX Runtime
    _check_external_data(into or folder, manifest, artifact, purpose)
    return checked


def _check_external_data(folder: Path, manifest: Manifest, artifact: ServedArtifact, purpose: str) -> None:
    """Refuse an ONNX artifact that keeps weights anywhere but in its own hashed companion beside it (its
    ``<file>.data``): a location outside the folder, a link, an unlisted file or ONNX Runtime's in-memory
    marker (``documents.external_data``), or a listed file the server would not copy with it."""
    named_by = f"manifest.json of '{folder}'"
    for name in artifact.files:
        if not name.endswith(".onnx") or not (folder / name).is_file():
            continue
        for data in check_external_data(folder, name, manifest.files, named_by):
            if data not in artifact.files:
                raise UsageError(
                    f"{named_by}: '{name}' keeps weights in '{data}', not in its own data file beside it "
                    f"({name}.data); refusing to {purpose} it"
                )


def _check_room(folder: Path, required: list[str], into: Path) -> None:
    """Refuse before copying when the private copy cannot fit where it goes (a model's multi-GB ``.data``
    in a small temporary folder), rather than failing gigabytes in; the message says how to move it."""
    named_by = f"manifest.json of '{folder}'"
    needed = 0
    for name in dict.fromkeys(required):
        path = inside_folder(folder, name, named_by)
        needed += path.stat().st_size if path.is_file() else 0
    existing = next(path for path in (into, *into.parents) if path.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise UsageError(
            f"the server's private copy of '{folder}' needs {_size(needed)} in '{into}', which has "
            f"{_size(free)} free; set TMPDIR to a folder with room"
        )


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _copy_hashed(source: Path, destination: Path) -> str:
    """Copy ``source`` to ``destination`` (owner-only), reading it once in 1 MiB blocks (memory stays flat
    for a multi-GB ``.data``); the sha256 of what was written.

    A copy, not a hard link: a link shares the inode, so a write into the folder's file after the check
    would change what the server loads; the copy is what was hashed.

    Raises:
        UsageError: the copy's disk filled up or refused the write (one line, with what to do).
    """
    digest = hashlib.sha256()
    destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        with source.open("rb") as reader, destination.open("xb") as writer:
            destination.chmod(0o600)
            for block in iter(lambda: reader.read(1 << 20), b""):
                digest.update(block)
                writer.write(block)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise UsageError(
            f"the server's private copy of {source.name} cannot be written in '{destination.parent}': "
            f"{error.strerror}; set TMPDIR to a folder with room"
        ) from None
    return digest.hexdigest()
