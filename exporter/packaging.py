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
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePath
from string import Template
from typing import Any

import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import exporter
from exporter._safe_paths import inside_folder, read_inside
from exporter._version import __version__
from exporter.artifacts import check_output_dir, output_lock, staging_dir
from exporter.errors import UsageError
from exporter.manifest import Manifest, TensorEntry, read_manifest
from exporter.serving.artifact import (
    ServedArtifact,
    check_integrity,
    choose_artifact,
    golden_cases,
    required_files,
    shipped_artifacts,
)
from exporter.serving.protocol import DATATYPE_OF, ModelSignature, signature_of

__all__ = [
    "RUNTIME_REQUIREMENTS",
    "Bundle",
    "TritonRepository",
    "package_bundle",
    "pinned_requirements",
    "server_sources",
    "triton_repository",
]

_SERVER = ("fastapi", "uvicorn", "uvloop", "httptools", "prometheus-client", "pydantic", "numpy")
RUNTIME_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (*_SERVER, "onnxruntime"),
    "openvino": (*_SERVER, "openvino"),
    "torch": (*_SERVER, "torch"),
}
"""The packages a bundle's server imports, per runtime; requirements.txt pins them and their dependencies."""

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""Where pip finds ``torch==X+cpu``: PyPI's Linux wheel of torch is the multi-GB CUDA build."""

PORT = 8000
TRITON_MAX_BATCH = 1024
"""Triton's ``max_batch_size`` never exceeds this, whatever the batch dim's declared maximum."""
SERVER_BATCH_ROWS = 64
"""How many rows the server batches along a batch dim without a declared maximum (``ServeOptions``)."""
TRITON_QUEUE_DELAY_US = 2000
"""How long Triton's dynamic batcher waits to fill a batch (the server's ``--max-batch-delay-ms``)."""
EXAMPLE_INLINE_VALUES = 64
"""README's curl example writes the request inline when its inputs have at most this many values."""

_DATA_TYPE = {name: f"TYPE_{datatype}" for name, datatype in DATATYPE_OF.items()}
"""numpy dtype name -> Triton's ``data_type`` enum name."""


@dataclass(frozen=True)
class TritonRepository:
    """``model_repository/<model>/``: a config.pbtxt and ``1/model.onnx``, or why there is none."""

    model: str | None
    source: str | None
    batching: bool
    skipped: str | None = None


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
    requirements = pinned_requirements(artifact.runtime)
    sources = server_sources(artifact.runtime)
    with output_lock(out), staging_dir(out, force, keep=[folder]) as staging:
        _copy_artifacts(folder, manifest, artifact, staging / "artifacts")
        copied = read_manifest(staging / "artifacts")
        staged = choose_artifact(staging / "artifacts", copied, artifact.backend)
        check_integrity(staging / "artifacts", copied, staged)
        _copy_sources(sources, staging)
        (staging / "requirements.txt").write_text(_requirements_text(manifest, artifact, requirements))
        triton = triton_repository(folder, manifest, artifact, staging / "model_repository")
        (staging / "Dockerfile").write_text(_dockerfile(artifact))
        (staging / ".dockerignore").write_text("model_repository/\n.venv/\n**/__pycache__/\n")
        example = _example_request(folder, manifest)
        (staging / "example_request.json").write_text(json.dumps(example) + "\n")
        (staging / "README.md").write_text(_readme(manifest, artifact, triton, sources, example))
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
        image=_image_name(manifest),
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


def server_sources(runtime: str) -> dict[str, Path]:
    """The server's source files, relative path in the bundle -> file here: every ``exporter`` module that
    importing ``exporter.serving.server`` and ``__main__``'s imports load, package ``__init__``s included.

    The import runs in a fresh interpreter, so the list is what the server loads, not what this process
    happened to import. Each third-party package it loads must be in ``runtime``'s requirements, so a
    server that starts importing (say) torch breaks packaging here, not a deployed image.
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
    _check_covered(found["third_party"], runtime)
    files = [Path(file) for file in found["exporter"].values() if file] + [Path(found["main"])]
    sources: dict[str, Path] = {}
    for file in sorted(set(files)):
        relative = file.resolve().relative_to(root.parent)
        sources[relative.as_posix()] = file
    return sources


def _check_covered(modules: list[str], runtime: str) -> None:
    """Refuse a server import (a top-level module) that no package pinned for ``runtime`` provides."""
    pinned = {canonicalize_name(line.partition("==")[0]) for line in pinned_requirements(runtime)}
    owners = metadata.packages_distributions()
    missing = [
        module
        for module in modules
        if owners.get(module) and not any(canonicalize_name(d) in pinned for d in owners[module])
    ]
    if missing:
        raise RuntimeError(
            f"the server imports {', '.join(missing)}, which the pinned {runtime} requirements do not "
            "install; add it to RUNTIME_REQUIREMENTS or make the import lazy"
        )


def _copy_sources(sources: dict[str, Path], bundle: Path) -> None:
    for relative, file in sources.items():
        destination = bundle / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, destination)


# --- requirements ---------------------------------------------------------------------------------------


def pinned_requirements(runtime: str) -> list[str]:
    """``name==version`` of ``runtime``'s packages and everything they depend on, as installed here.

    Markers are evaluated for this interpreter (the image's Python is this one's version); extras are
    followed only where a requirement names them.

    Raises:
        UsageError: a needed package is not installed in this environment (the message names it).
    """
    pins: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str], str]] = [
        (name, frozenset(), "exporter's server") for name in RUNTIME_REQUIREMENTS[runtime]
    ]
    while pending:
        name, extras, wanted_by = pending.pop()
        key = canonicalize_name(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UsageError(
                f"a {runtime} bundle needs the package '{name}' (required by {wanted_by}), which is not "
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


# --- Triton model repository ----------------------------------------------------------------------------


def triton_model_name(name: str) -> str:
    """``name`` as a Triton model (and folder) name: letters, digits, ``_``, ``.`` and ``-`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cleaned if cleaned.strip(".") else "model"


def _onnx_source(manifest: Manifest, artifact: ServedArtifact) -> ServedArtifact | None:
    """The ONNX model Triton serves: the bundle's own, else the folder's verified float ``onnxruntime``
    model. An ORT-optimized graph may hold com.microsoft fused ops tied to this ORT build: not preferred."""
    shipped = shipped_artifacts(manifest)
    if artifact.runtime == "onnxruntime" and artifact.backend != "onnxruntime-optimized":
        return artifact
    return shipped.get("onnxruntime") or (artifact if artifact.runtime == "onnxruntime" else None)


def triton_repository(
    folder: Path, manifest: Manifest, artifact: ServedArtifact, repository: Path
) -> TritonRepository:
    """Write ``repository/<model>/config.pbtxt`` and ``1/model.onnx`` (with any external data beside it).

    Returns why it was skipped instead when the folder has no ONNX model, or the model's inputs, outputs or
    data types do not match the manifest's (Triton would refuse the config).
    """
    source = _onnx_source(manifest, artifact)
    if source is None:
        return TritonRepository(None, None, False, "the folder ships no verified ONNX model")
    model = triton_model_name(manifest.name)
    try:
        text, batching = triton_config(folder / source.file, signature_of(folder, manifest), manifest, model)
    except ValueError as error:
        return TritonRepository(None, source.file, False, str(error))
    version = repository / model / "1"
    version.mkdir(parents=True)
    (repository / model / "config.pbtxt").write_text(text)
    shutil.copyfile(folder / source.file, version / "model.onnx", follow_symlinks=False)
    for companion in source.files[1:]:
        shutil.copyfile(folder / companion, version / Path(companion).name, follow_symlinks=False)
    return TritonRepository(model, source.file, batching)


def triton_config(path: Path, signature: ModelSignature, manifest: Manifest, model: str) -> tuple[str, bool]:
    """config.pbtxt of the ONNX model at ``path``, and whether it batches.

    Names come from the ONNX graph (Triton matches them exactly); data types and dims from the manifest and
    the golden outputs, which say which dims are dynamic. The batch dim is folded into ``max_batch_size``
    only when it leads every input and output and the graph leaves it dynamic.

    Raises:
        ValueError: the graph's tensors do not match the manifest's.
    """
    graph_inputs, graph_outputs = _graph_tensors(path)
    declared = {rule.name: (rule.dtype, rule.dims) for rule in signature.inputs}
    declared_outputs = {info.name: (info.dtype, info.shape) for info in signature.outputs}
    inputs = [_tensor(t, declared, "input") for t in graph_inputs]
    outputs = [_tensor(t, declared_outputs, "output") for t in graph_outputs]
    limit = _max_batch(manifest, signature.batch_dim) if signature.batch_dim is not None else 0
    batching = limit > 1 and all(
        graph_dims and graph_dims[0] is None for (_, _, graph_dims) in (*graph_inputs, *graph_outputs)
    )
    lines = [
        f"name: {_quoted(model)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {limit if batching else 0}",
    ]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        blocks = [
            _tensor_block(name, data_type, dims[1:] if batching else dims)
            for name, data_type, dims in tensors
        ]
        lines += [f"{kind} [", ",\n".join(blocks), "]"]
    if batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}", "}"]
    lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_CPU", "  }", "]"]
    return "\n".join(lines) + "\n", batching


_GraphTensor = tuple[str, str, tuple[int | None, ...]]
"""An ONNX graph input or output: name, numpy dtype name, dims (None where the graph leaves it open)."""


def _graph_tensors(path: Path) -> tuple[list[_GraphTensor], list[_GraphTensor]]:
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {initializer.name for initializer in graph.initializer}

    def described(value: Any) -> _GraphTensor:
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        return value.name, np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type)).name, dims

    inputs = [described(value) for value in graph.input if value.name not in initializers]
    return inputs, [described(value) for value in graph.output]


def _tensor(
    graph: _GraphTensor, declared: Mapping[str, tuple[np.dtype, tuple[int | str, ...]]], kind: str
) -> tuple[str, str, list[int]]:
    """name, Triton data type and dims (-1 where dynamic) of one graph tensor, checked against the manifest.

    A size the graph fixes wins over a dynamic one the manifest declares: Triton refuses a config whose
    dim is looser than the model's.
    """
    name, graph_dtype, graph_dims = graph
    if name not in declared:
        raise ValueError(f"the ONNX model's {kind} '{name}' is not in the manifest")
    dtype, dims = declared[name]
    if dtype.name != graph_dtype:
        raise ValueError(f"the ONNX model's {kind} '{name}' is {graph_dtype}, the manifest says {dtype.name}")
    if dtype.name not in _DATA_TYPE:
        raise ValueError(f"{kind} '{name}' is {dtype.name}, which Triton has no data type for")
    if len(dims) != len(graph_dims):
        raise ValueError(
            f"the ONNX model's {kind} '{name}' has rank {len(graph_dims)}, the manifest says {len(dims)}"
        )
    merged = [
        graph_size if graph_size is not None else (-1 if isinstance(size, str) else size)
        for size, graph_size in zip(dims, graph_dims, strict=True)
    ]
    return name, _DATA_TYPE[dtype.name], merged


def _max_batch(manifest: Manifest, batch: str) -> int:
    """The batch dim's declared maximum; with none declared, the server's own batch limit (64 rows) or the
    largest batch the folder was checked at, if larger. 0 (no batching) when batches below 2 are refused."""
    declared = manifest.input_spec.dynamic_dims.get(batch)
    if declared is not None and declared.min > 1:
        return 0
    if declared is not None and declared.max is not None:
        return min(declared.max, TRITON_MAX_BATCH)
    checked = [case.sizes[batch] for case in golden_cases(manifest) if batch in case.sizes]
    checked += manifest.benchmark.batch_sizes if manifest.benchmark else []
    return min(max([SERVER_BATCH_ROWS, *checked]), TRITON_MAX_BATCH)


def _tensor_block(name: str, data_type: str, dims: list[int]) -> str:
    shown = ", ".join(map(str, dims))
    lines = ["  {", f"    name: {_quoted(name)}", f"    data_type: {data_type}"]
    if dims:
        lines.append(f"    dims: [ {shown} ]")
    else:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "\n".join([*lines, "  }"])


def _quoted(text: str) -> str:
    """A protobuf text-format string literal (JSON's escapes are a subset of it for these names)."""
    return json.dumps(text, ensure_ascii=False)


# --- Dockerfile, README, example request ----------------------------------------------------------------

_DOCKERFILE = Template("""\
# The $backend model server of this bundle (written by exporter package).
FROM python:$python-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 serve
WORKDIR /app
# Dependencies first: this layer is reused while requirements.txt is unchanged.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY exporter/ exporter/
COPY artifacts/ artifacts/
# The files stay root-owned: the server reads them and cannot change them.
USER serve
EXPOSE $port
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \\
  CMD $healthcheck
CMD $command
""")

_HEALTHCHECK = (
    "import sys, urllib.request; "
    "sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/v2/health/ready', timeout=3).status != 200)"
)
"""python:*-slim has no curl; urllib raises (exit 1) on a 503 while the server is not ready."""

_README = Template("""\
# $name: model server bundle

Written by `exporter package` (exporter $version) from an artifacts folder exported $created.
It serves the **$backend** artifact ($files) with $runtime over the KServe v2 (Open Inference
Protocol) HTTP API on port $port, with Prometheus metrics at `/metrics`.

## What is in it

- `artifacts/`: `manifest.json` (its checkpoint and `--model` paths cut to file names), the artifact
  and golden cases. The server checks each file's sha256 against the manifest before it listens.
- `exporter/`: the server's source, $modules files of exporter (no torch unless the backend needs it).
- `requirements.txt`: exact pins of the server and the $runtime runtime, with their dependencies.
- `Dockerfile`, `.dockerignore`: the image; non-root user, health check on `/v2/health/ready`.
- `example_request.json`: the golden `$case` case as a request.
- `model_repository/`: the same model for Triton Inference Server (see below).

## Run it with Docker

```bash
docker build -t $image .
docker run --rm -p $port:$port $image
```

## Run it without Docker (Python $python, Linux)

```bash
python -m venv .venv && .venv/bin/pip install -r requirements.txt && \\
  .venv/bin/python -m exporter.serving artifacts --backend $backend
```

`--backend $backend` matters: the manifest lists every artifact of the export, this bundle carries only
this one. `--port`, `--threads`, `--max-batch-size` and `--max-batch-delay-ms` tune the server;
`/v2/health/ready` answers 200 once the artifact has passed its golden cases.

## Call it

$curl

With Triton's Python client (`pip install tritonclient[http]`), from this folder:

```python
$client
```

## Triton

$triton
""")


def _dockerfile(artifact: ServedArtifact) -> str:
    return _DOCKERFILE.substitute(
        backend=artifact.backend,
        python=_python_version(),
        port=PORT,
        healthcheck=json.dumps(["python", "-c", Template(_HEALTHCHECK).substitute(port=PORT)]),
        command=json.dumps(_serve_command(artifact)),
    )


def _serve_command(artifact: ServedArtifact) -> list[str]:
    return [
        *("python", "-m", "exporter.serving", "artifacts"),
        *("--host", "0.0.0.0", "--port", str(PORT), "--backend", artifact.backend),
    ]


def _image_name(manifest: Manifest) -> str:
    return f"{triton_model_name(manifest.name).lower().strip('._-') or 'model'}-server"


def _python_version() -> str:
    """The image's Python is this one's: requirements' markers were evaluated for it."""
    return ".".join(map(str, sys.version_info[:2]))


def _example_values(tensor: TensorEntry) -> tuple[list[int], list[Any]]:
    """A valid request tensor at the example shape: every value the low end of the input's range."""
    shape = list(tensor.example_shape)
    dtype = np.dtype(tensor.dtype)
    low = tensor.range[0] if tensor.range else 0
    value: Any = False if dtype.kind == "b" else (int(low) if dtype.kind in "iu" else float(low))
    return shape, [value] * math.prod(shape)


def _example_request(folder: Path, manifest: Manifest) -> dict[str, Any]:
    """The golden ``export`` case's inputs as a KServe v2 request (its outputs are the expected answer)."""
    cases = golden_cases(manifest)
    case = next((c for c in cases if c.case == "export"), cases[0] if cases else None)
    if case is None:
        tensors = []
        for tensor in manifest.input_spec.inputs:
            shape, data = _example_values(tensor)
            tensors.append(
                {"name": tensor.name, "shape": shape, "datatype": DATATYPE_OF[tensor.dtype], "data": data}
            )
        return {"id": "example", "inputs": tensors}
    with np.load(folder / case.inputs, allow_pickle=False) as arrays:
        tensors = [
            {
                "name": tensor.name,
                "shape": list(arrays[tensor.name].shape),
                "datatype": DATATYPE_OF[arrays[tensor.name].dtype.name],
                "data": arrays[tensor.name].reshape(-1).tolist(),
            }
            for tensor in manifest.input_spec.inputs
        ]
    return {"id": case.case, "inputs": tensors}


def _readme(
    manifest: Manifest,
    artifact: ServedArtifact,
    triton: TritonRepository,
    sources: dict[str, Path],
    example: dict[str, Any],
) -> str:
    return _README.substitute(
        name=manifest.name,
        version=__version__,
        created=manifest.created_utc,
        backend=artifact.backend,
        files=", ".join(f"`artifacts/{file}`" for file in artifact.files),
        runtime=artifact.runtime,
        port=PORT,
        modules=len(sources),
        case=example["id"],
        image=_image_name(manifest),
        python=_python_version(),
        curl=_curl_example(manifest, example),
        client=_client_example(manifest, example),
        triton=_triton_section(triton),
    )


def _curl_example(manifest: Manifest, example: dict[str, Any]) -> str:
    """Inline zeros at the example shape when that is short, and the example request file."""
    url = f"http://localhost:{PORT}/v2/models/{manifest.name}/infer"
    header = "-H 'Content-Type: application/json'"
    by_file = f"```bash\ncurl -s {url} {header} -d @example_request.json\n```"
    case = example["id"]
    golden = f"the golden `{case}` case (expected outputs: `artifacts/golden/{case}.outputs.npz`)"
    inline = [(tensor, *_example_values(tensor)) for tensor in manifest.input_spec.inputs]
    if sum(len(data) for _, _, data in inline) > EXAMPLE_INLINE_VALUES:
        return f"Send {golden}:\n\n{by_file}"
    body = {
        "inputs": [
            {"name": t.name, "shape": shape, "datatype": DATATYPE_OF[t.dtype], "data": data}
            for t, shape, data in inline
        ]
    }
    inline_curl = f"```bash\ncurl -s {url} {header} \\\n  -d '{json.dumps(body)}'\n```"
    return f"{inline_curl}\n\nor send {golden}:\n\n{by_file}"


def _client_example(manifest: Manifest, example: dict[str, Any]) -> str:
    """A tritonclient.http script: the example request's inputs in, the largest error vs golden out."""
    lines = [
        "import json",
        "",
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "from tritonclient.utils import triton_to_np_dtype",
        "",
        f'client = httpclient.InferenceServerClient("localhost:{PORT}")',
        "tensors = []",
        'for entry in json.load(open("example_request.json"))["inputs"]:',
        '    dtype = triton_to_np_dtype(entry["datatype"])',
        '    data = np.array(entry["data"], dtype=dtype).reshape(entry["shape"])',
        '    tensor = httpclient.InferInput(entry["name"], entry["shape"], entry["datatype"])',
        "    tensor.set_data_from_numpy(data, binary_data=False)",
        "    tensors.append(tensor)",
        f"names = {json.dumps(list(manifest.output_names or []))}",
        "outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in names]",
        f'result = client.infer("{manifest.name}", tensors, outputs=outputs)',
    ]
    if example["id"] in {case.case for case in golden_cases(manifest)}:
        lines += [
            f'expected = np.load("artifacts/golden/{example["id"]}.outputs.npz")',
            "for name in names:",
            "    error = np.abs(result.as_numpy(name) - expected[name]).max()",
            '    print(name, "max abs error vs golden:", error)',
        ]
    else:
        lines += ["for name in names:", "    print(name, result.as_numpy(name))"]
    return "\n".join(lines)


def _triton_section(triton: TritonRepository) -> str:
    if triton.model is None:
        return f"No Triton model repository in this bundle: {triton.skipped}."
    batching = (
        "dynamic batching on"
        if triton.batching
        else "no batching: the batch dim does not lead every input and output"
    )
    return (
        f"`model_repository/{triton.model}/` holds `{triton.source}` as `1/model.onnx` and a `config.pbtxt`\n"
        f"(platform `onnxruntime_onnx`, {batching}). Serve it with Triton Inference Server:\n\n"
        "```bash\n"
        "tritonserver --model-repository=model_repository\n"
        '# or: docker run --rm -p 8000:8000 -v "$PWD/model_repository:/models" \\\n'
        "#   nvcr.io/nvidia/tritonserver:<release>-py3 tritonserver --model-repository=/models\n"
        "```\n\n"
        f"Triton speaks the same protocol: the examples above work against it with the model name\n"
        f"`{triton.model}`. The Docker image of this bundle leaves this folder out (`.dockerignore`)."
    )
