"""``exporter package``: an artifacts folder and the model server that runs it, as one folder that a Docker
build or a plain virtual environment turns into a running service.

The bundle carries only what its backend needs: the one artifact (and its golden cases, which the server
re-checks before it listens), the server's own torch-free source files, and exact pins of the runtime
packages, so an ONNX bundle installs neither torch nor OpenVINO. Beside it, a Triton model repository of
the same ONNX model, for teams that already run Triton. The folder is built in a staging directory and
moved into place only when complete, as ``exporter export`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePath

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import exporter
from exporter._version import __version__
from exporter.backends.registry import BackendSpec
from exporter.backends.registry import backend as backend_spec
from exporter.documents.manifest import Manifest, read_manifest
from exporter.errors import UsageError
from exporter.loading.safe_paths import inside_folder, read_inside
from exporter.packaging.docs import bundle_readme, dockerfile, image_name
from exporter.packaging.example import example_request
from exporter.packaging.triton import (
    TritonRepository,
    triton_repository,
)
from exporter.serving.artifact import (
    ServedArtifact,
    check_integrity,
    choose_artifact,
    required_files,
)
from exporter.serving.decoder import decoder_files
from exporter.stages.staging import check_output_dir, output_lock, staging_dir

__all__ = [
    "SERVER_REQUIREMENTS",
    "Bundle",
    "TritonRepository",
    "bundle_requirements",
    "package_bundle",
    "pinned_requirements",
    "server_sources",
    "triton_repository",
]

SERVER_REQUIREMENTS = (
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus-client",
    "orjson",
    "pydantic",
    "numpy",
)
"""The packages the server itself imports, whatever it serves; the backend's ``requirements`` add its
runtime's. requirements.txt pins them and their dependencies."""


TOKENIZER_REQUIREMENTS = ("tokenizers",)
"""What a decoder's server adds when it has a tokenizer (imported only then: ``serving.decoder``)."""


def bundle_requirements(spec: BackendSpec, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The packages a bundle serving ``spec``'s artifact installs (before their dependencies)."""
    return (*SERVER_REQUIREMENTS, *spec.requirements, *extra)


def manifest_requirements(manifest: Manifest) -> tuple[str, ...]:
    """Packages the served model's own files need: ``tokenizers`` for a decoder with a tokenizer."""
    return TOKENIZER_REQUIREMENTS if any(n.startswith("tokenizer/") for n in decoder_files(manifest)) else ()


TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""Where pip finds ``torch==X+cpu``: PyPI's Linux wheel of torch is the multi-GB CUDA build."""


@dataclass(frozen=True)
class Bundle:
    """What ``package_bundle`` wrote: counted after the move, so the numbers are the folder's."""

    path: Path
    name: str
    backend: str
    runtime: str
    files: int
    bytes: int
    requirements: int
    server_modules: int
    triton: TritonRepository
    image: str
    """The Docker image tag the README builds."""


def package_bundle(folder: Path, out: Path, backend: str | None = None, force: bool = False) -> Bundle:
    """Write the serving bundle of ``folder`` for ``backend`` (default: the fastest shipped artifact).

    Everything that can refuse is checked before the first file is written; the bundle's own copy of the
    artifacts is re-checked against the manifest before it is moved into place.

    Raises:
        UsageError: a folder that fails the integrity check, an unknown or unshipped backend, a runtime
            package not installed here, or an ``out`` in the way (exit 2).
    """
    manifest = read_manifest(folder)
    artifact = choose_artifact(folder, manifest, backend)
    check_integrity(folder, manifest, artifact, purpose="package")
    check_output_dir(out, force, keep=[folder])
    spec = backend_spec(artifact.backend)
    requirements = pinned_requirements(spec, manifest_requirements(manifest))
    sources = server_sources(spec)
    with output_lock(out), staging_dir(out, force, keep=[folder]) as staging:
        _copy_artifacts(folder, manifest, artifact, staging / "artifacts")
        copied = read_manifest(staging / "artifacts")
        staged = choose_artifact(staging / "artifacts", copied, artifact.backend)
        check_integrity(staging / "artifacts", copied, staged)
        _copy_sources(sources, staging)
        (staging / "requirements.txt").write_text(_requirements_text(manifest, artifact, requirements))
        triton = triton_repository(folder, manifest, artifact, staging / "model_repository")
        (staging / "Dockerfile").write_text(dockerfile(artifact))
        (staging / ".dockerignore").write_text("model_repository/\n.venv/\n**/__pycache__/\n")
        example = example_request(folder, manifest)
        (staging / "example_request.json").write_text(json.dumps(example.request) + "\n")
        (staging / "README.md").write_text(bundle_readme(manifest, artifact, triton, sources, example))
    files = [path for path in out.rglob("*") if path.is_file()]
    return Bundle(
        path=out,
        name=manifest.name,
        backend=artifact.backend,
        runtime=artifact.runtime,
        files=len(files),
        bytes=sum(path.stat().st_size for path in files),
        requirements=len(requirements),
        server_modules=len(sources),
        triton=triton,
        image=image_name(manifest),
    )


def _copy_artifacts(folder: Path, manifest: Manifest, artifact: ServedArtifact, target: Path) -> None:
    """The manifest (without the export machine's paths), then the served artifact and golden cases the
    manifest lists with a sha256: regular files inside the folder, never a link. The copy is re-checked
    against the manifest after. The reports stay behind: they record the export machine's paths and
    commands, and the server does not read them."""
    named_by = f"manifest.json of '{folder}'"
    target.mkdir(parents=True, exist_ok=True)
    manifest_bytes = read_inside(folder, "manifest.json", named_by)
    (target / "manifest.json").write_bytes(_without_local_paths(manifest_bytes))
    for name in dict.fromkeys(required_files(manifest, artifact)):
        source = inside_folder(folder, name, named_by)
        if name not in manifest.files or not source.is_file():
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination, follow_symlinks=False)


def _without_local_paths(manifest: bytes) -> bytes:
    """The manifest with its checkpoint and ``--model`` file reduced to file names: a bundle (and the image
    built from it) should not tell where the exporting machine kept them. Nothing the server or the
    integrity check reads changes."""
    document = json.loads(manifest)
    source = document.get("source")
    if isinstance(source, dict):
        if isinstance(source.get("checkpoint"), str):
            source["checkpoint"] = PurePath(source["checkpoint"]).name
        model = source.get("model")
        if isinstance(model, str) and ".py:" in model:
            file, _, factory = model.rpartition(":")
            source["model"] = f"{PurePath(file).name}:{factory}"
    return (json.dumps(document, indent=2) + "\n").encode()


# --- the server's source ------------------------------------------------------------------------------

_PROBE = """
import ast, importlib, importlib.util, json, sys
before = set(sys.modules)
import exporter.serving.server
import exporter.serving
main = exporter.serving.__path__[0] + "/__main__.py"
for node in ast.walk(ast.parse(open(main).read())):
    if isinstance(node, ast.ImportFrom):
        base = importlib.util.resolve_name("." * node.level + (node.module or ""), "exporter.serving")
        if base.split(".")[0] == "exporter":
            module = importlib.import_module(base)
            for alias in node.names:
                if hasattr(module, "__path__") and importlib.util.find_spec(f"{base}.{alias.name}"):
                    importlib.import_module(f"{base}.{alias.name}")
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "exporter":
                importlib.import_module(alias.name)
ours = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] == "exporter"}
tops = {n.split(".")[0] for n in set(sys.modules) - before}
others = sorted(t for t in tops if t not in sys.stdlib_module_names and t != "exporter" and t[0] != "_")
print(json.dumps({"exporter": ours, "third_party": others, "main": main}))
"""
"""Run in a fresh interpreter: what importing the server (and what its ``__main__`` imports) loads."""


def server_sources(spec: BackendSpec) -> dict[str, Path]:
    """The server's source files, relative path in the bundle -> file here: every ``exporter`` module that
    importing ``exporter.serving.server`` and ``__main__``'s imports load, package ``__init__``s included.

    The import runs in a fresh interpreter, so the list is what the server loads, not what this process
    happened to import. Each third-party package it loads must be in the bundle's requirements for
    ``spec``, so a server that starts importing (say) torch breaks packaging here, not a deployed image.
    """
    root = Path(exporter.__file__).resolve().parent
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root.parent), os.environ.get("PYTHONPATH")])),
    }
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE],
        check=False,
        cwd=root.parent,
        env=environment,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"importing exporter.serving.server failed: {lines[-1]}")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    _check_covered(found["third_party"], spec)
    files = [Path(file) for file in found["exporter"].values() if file] + [Path(found["main"])]
    sources: dict[str, Path] = {}
    for file in sorted(set(files)):
        relative = file.resolve().relative_to(root.parent)
        sources[relative.as_posix()] = file
    return sources


def _check_covered(modules: list[str], spec: BackendSpec) -> None:
    """Refuse a server import (a top-level module) that no package pinned for ``spec`` provides."""
    pinned = {canonicalize_name(line.partition("==")[0]) for line in pinned_requirements(spec)}
    owners = metadata.packages_distributions()
    missing = [
        module
        for module in modules
        if owners.get(module) and not any(canonicalize_name(d) in pinned for d in owners[module])
    ]
    if missing:
        raise RuntimeError(
            f"the server imports {', '.join(missing)}, which the pinned {spec.name} requirements do not "
            "install; add it to SERVER_REQUIREMENTS (or the backend's requirements) or make the import lazy"
        )


def _copy_sources(sources: dict[str, Path], bundle: Path) -> None:
    for relative, file in sources.items():
        destination = bundle / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, destination)


# --- requirements ---------------------------------------------------------------------------------------


def pinned_requirements(spec: BackendSpec, extra: tuple[str, ...] = ()) -> list[str]:
    """``name==version`` of the packages a bundle of ``spec`` needs and everything they depend on, as
    installed here.

    Markers are evaluated for this interpreter (the image's Python is this one's version); extras are
    followed only where a requirement names them.

    Raises:
        UsageError: a needed package is not installed in this environment (the message names it).
    """
    pins: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str], str]] = [
        (name, frozenset(), "exporter's server") for name in bundle_requirements(spec, extra)
    ]
    while pending:
        name, extras, wanted_by = pending.pop()
        key = canonicalize_name(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UsageError(
                f"a {spec.name} bundle needs the package '{name}' (required by {wanted_by}), which is not "
                f"installed in this environment ({sys.executable}); pip install -r requirements.txt"
            ) from None
        if key in pins and not extras:
            continue
        pins[key] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            contexts = [{"extra": extra} for extra in ("", *extras)]
            if requirement.marker is None or any(requirement.marker.evaluate(c) for c in contexts):
                pending.append((requirement.name, frozenset(requirement.extras), key))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _requirements_text(manifest: Manifest, artifact: ServedArtifact, pins: list[str]) -> str:
    python = ".".join(map(str, sys.version_info[:2]))
    lines = [
        f"# Serving bundle of '{manifest.name}': backend {artifact.backend}, runtime {artifact.runtime}.",
        f"# Exact pins from the environment that packaged it (exporter {__version__}, Python {python}),",
        "# dependencies included; install into a fresh environment: pip install -r requirements.txt",
    ]
    if any(pin.startswith("torch==") for pin in pins):
        lines.append(f"--extra-index-url {TORCH_CPU_INDEX}")
    return "\n".join([*lines, *pins]) + "\n"
