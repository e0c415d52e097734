"""The human-facing files of a bundle: Dockerfile, README.md and example_request.json.

Each is generated from the manifest and the chosen artifact, so the commands it shows are the ones that run
the bundle (the same port, backend and image tag); the example request is chosen in ``packaging.example``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from string import Template

from exporter._version import __version__
from exporter.documents.manifest import Manifest
from exporter.packaging.example import Example, example_values
from exporter.packaging.triton import TritonRepository, triton_model_name
from exporter.serving.artifact import ServedArtifact
from exporter.serving.decoder import hf_entry
from exporter.serving.protocol import DATATYPE_OF

__all__ = ["PORT", "bundle_readme", "dockerfile", "image_name"]

PORT = 8000
EXAMPLE_INLINE_VALUES = 64
"""README's curl example writes the request inline when its inputs have at most this many values."""

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
- `example_request.json`: a request with $example.
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
this one. `--port`, `--workers`, `--threads`, `--max-batch-size` and `--max-batch-delay-ms` tune the server;
`/v2/health/ready` answers 200 once the artifact has passed its golden cases.

## Call it

$curl
$generate
With Triton's Python client (`pip install tritonclient[http]`), from this folder:

```python
$client
```

## Triton

$triton
""")


def dockerfile(artifact: ServedArtifact) -> str:
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


def image_name(manifest: Manifest) -> str:
    return f"{triton_model_name(manifest.name).lower().strip('._-') or 'model'}-server"


def _python_version() -> str:
    """The image's Python is this one's: requirements' markers were evaluated for it."""
    return ".".join(map(str, sys.version_info[:2]))


def bundle_readme(
    manifest: Manifest,
    artifact: ServedArtifact,
    triton: TritonRepository,
    sources: dict[str, Path],
    example: Example,
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
        example=example.origin,
        image=image_name(manifest),
        python=_python_version(),
        curl=_curl_example(manifest, example),
        client=_client_example(manifest, example),
        triton=_triton_section(triton),
        generate=_generate_section(manifest),
    )


def _generate_section(manifest: Manifest) -> str:
    """A decoder's generate endpoints (Triton's generate extension), when the bundle serves one."""
    entry = hf_entry(manifest)
    if entry is None or entry.get("decoder") is None:
        return ""
    base = f"http://localhost:{PORT}/v2/models/{manifest.name}"
    text = "tokenizer/tokenizer.json" in (entry.get("tokenizer") or [])
    prompt = '"text_input": "The quick brown fox"' if text else '"input_ids": [1, 5, 9]'
    body = f'{{{prompt}, "parameters": {{"max_tokens": 16}}}}'
    takes = (
        "`text_input` (tokenized by `artifacts/tokenizer/`) or `input_ids`"
        if text
        else "`input_ids` (the folder had no fast tokenizer)"
    )
    return (
        "\nThis model is a decoder: it also speaks Triton's generate extension (greedy decoding, a\n"
        f"cache per request), taking {takes}; `parameters.max_tokens` (default 16) and `ignore_eos`:\n\n"
        "```bash\n"
        f"curl -s {base}/generate -H 'Content-Type: application/json' -d '{body}'\n"
        f"curl -sN {base}/generate_stream -H 'Content-Type: application/json' -d '{body}'\n"
        "```\n\n"
        '`generate` answers `{"text_output", "output_ids", "finish_reason", ...}`; `generate_stream`\n'
        'sends one server-sent event per token (`data: {"text_output": piece, "output_ids": [id], ...}`).\n'
    )


def _curl_example(manifest: Manifest, example: Example) -> str:
    """Inline zeros at the example shape when that is short, and the example request file."""
    url = f"http://localhost:{PORT}/v2/models/{manifest.name}/infer"
    header = "-H 'Content-Type: application/json'"
    by_file = f"```bash\ncurl -s {url} {header} -d @example_request.json\n```"
    golden = f"`example_request.json` ({example.origin}"
    if example.expected is not None:
        rows = f", its first {example.rows} rows" if example.rows is not None else ""
        golden += f"; expected outputs: `artifacts/{example.expected}`{rows}"
    golden += ")"
    inline = [(tensor, *example_values(tensor)) for tensor in manifest.input_spec.inputs]
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


def _client_example(manifest: Manifest, example: Example) -> str:
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
    if example.expected is not None:
        rows = "" if example.rows is None else f"[:{example.rows}]"
        lines += [
            f'expected = np.load("artifacts/{example.expected}")',
            "for name in names:",
            f"    error = np.abs(result.as_numpy(name) - expected[name]{rows}).max()",
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
    beside = "".join(f" (its weights in `1/{name}`)" for name in triton.companions)
    if triton.tokenizer:
        beside += (
            " (the tokenizer in `1/tokenizer/`: Triton's ONNX backend serves the model's infer, logits\n"
            "and cache; text in and out and the generate extension are this bundle's server's, or those of\n"
            "a Python-backend model of yours that reads that tokenizer)"
        )
    return (
        f"`model_repository/{triton.model}/` holds `{triton.source}` as `1/{triton.model_file}`{beside} and "
        f"a `config.pbtxt`\n(platform `{triton.platform}`, {batching}). "
        "Serve it with Triton Inference Server:\n\n"
        "```bash\n"
        "tritonserver --model-repository=model_repository\n"
        '# or: docker run --rm -p 8000:8000 -v "$PWD/model_repository:/models" \\\n'
        "#   nvcr.io/nvidia/tritonserver:<release>-py3 tritonserver --model-repository=/models\n"
        "```\n\n"
        f"Triton speaks the same protocol: the examples above work against it with the model name\n"
        f"`{triton.model}`. The Docker image of this bundle leaves this folder out (`.dockerignore`)."
    )
