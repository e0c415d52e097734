"""``exporter package``: the bundle holds only what its backend needs, Triton parses its config, its
requirements pin no training stack, a bad folder leaves nothing behind, and (slow) the bundle installs
into an empty virtual environment and serves the golden outputs without torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from exporter.backends.registry import backend
from exporter.cli import app
from exporter.documents.manifest import read_manifest
from exporter.packaging.bundle import _check_covered, bundle_requirements, package_bundle
from exporter.packaging.triton import triton_config, triton_repository
from exporter.serving.artifact import check_integrity, choose_artifact
from exporter.serving.protocol import signature_of
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.conftest import export_tiny_mlp, write_calibration
from tests.models import MODELS

TRAINING_STACK = {"torch", "onnx", "nncf", "scipy", "scikit-learn", "openvino", "onnxscript", "torchao"}
PIN = re.compile(r"^[a-z0-9][a-z0-9._-]*==[A-Za-z0-9.+!_-]+$")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MLP with a batch dim, exported to ONNX and TorchScript."""
    return export_tiny_mlp(tmp_path_factory.mktemp("package"), targets=("onnx", "torchscript"))


def _package(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["package", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def onnx_bundle(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("bundles") / "onnx"
    code, output = _package(folder, "--out", bundle, "--backend", "onnxruntime")
    assert code == 0, output
    assert "onnxruntime" in output and "files" in output
    return bundle


def _requirements(bundle: Path) -> tuple[list[str], list[str]]:
    """(pins, other non-comment lines) of the bundle's requirements.txt."""
    lines = [line for line in (bundle / "requirements.txt").read_text().splitlines() if line.strip()]
    pins = [line for line in lines if not line.startswith(("#", "-"))]
    return pins, [line for line in lines if line.startswith("-")]


def test_bundle_carries_only_the_served_artifact(folder: Path, onnx_bundle: Path) -> None:
    artifacts = onnx_bundle / "artifacts"
    original = json.loads((folder / "manifest.json").read_text())
    bundled = json.loads((artifacts / "manifest.json").read_text())
    assert bundled["files"] == original["files"] and bundled["golden"] == original["golden"]
    assert bundled["source"]["checkpoint"] == Path(original["source"]["checkpoint"]).name
    assert (artifacts / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    assert not (artifacts / "report.json").exists() and not (artifacts / "report.md").exists()
    assert not (artifacts / "model.ts").exists()
    manifest = read_manifest(artifacts)
    checked = check_integrity(artifacts, manifest, choose_artifact(artifacts, manifest, "onnxruntime"))
    copied = {path.relative_to(artifacts).as_posix() for path in artifacts.rglob("*") if path.is_file()}
    assert copied - set(manifest.files) == {"manifest.json"}
    assert checked == len(copied & set(manifest.files))
    golden = sorted(path.name for path in (artifacts / "golden").iterdir())
    assert golden == sorted(path.name for path in (folder / "golden").iterdir())


def test_triton_config_is_what_triton_parses(folder: Path, onnx_bundle: Path) -> None:
    model_dir = onnx_bundle / "model_repository" / "mlp"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "mlp"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64  # no declared batch maximum: the server's own batch limit
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("x", model_config_pb2.TYPE_FP32, [16])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("output", model_config_pb2.TYPE_FP32, [4])
    ]
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert (model_dir / "1" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in config.input] == [i.name for i in session.get_inputs()]
    assert [o.name for o in config.output] == [o.name for o in session.get_outputs()]


def test_triton_config_without_a_batch_dim_keeps_full_dynamic_dims(folder: Path) -> None:
    manifest = read_manifest(folder).model_copy(update={"benchmark": None})
    onnx = backend("onnxruntime")
    assert onnx.file is not None and onnx.triton_platform is not None
    signature = signature_of(folder, manifest)
    text, batching = triton_config(folder / onnx.file, signature, manifest, "mlp", onnx.triton_platform)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert not batching
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, 16]
    assert list(config.output[0].dims) == [-1, 4]


def test_no_triton_repository_without_an_onnx_model(folder: Path, tmp_path: Path) -> None:
    manifest = read_manifest(folder)
    torchscript_only = manifest.model_copy(
        update={"artifacts": [a for a in manifest.artifacts or [] if a.backend == "torchscript"]}
    )
    artifact = choose_artifact(folder, torchscript_only, None)
    repository = triton_repository(folder, torchscript_only, artifact, tmp_path / "model_repository")
    assert repository.model is None and repository.skipped == "the folder ships no verified ONNX model"
    assert not (tmp_path / "model_repository").exists()


def test_onnx_requirements_are_exact_pins_without_the_training_stack(onnx_bundle: Path) -> None:
    pins, options = _requirements(onnx_bundle)
    assert options == []
    assert all(PIN.match(pin) for pin in pins), pins
    ordered = [pin.partition("==")[0] for pin in pins]
    assert ordered == sorted(ordered)
    names = set(ordered)
    assert not names & TRAINING_STACK
    assert set(bundle_requirements(backend("onnxruntime"))) <= names
    assert f"onnxruntime=={metadata.version('onnxruntime')}" in pins
    assert "starlette" in names and "h11" in names  # dependencies of the top-level packages
    assert "onnxruntime" in (onnx_bundle / "requirements.txt").read_text().splitlines()[0]


def test_torchscript_bundle_pins_torch_from_the_cpu_index(
    folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bundle = tmp_path_factory.mktemp("bundles") / "torchscript"
    code, output = _package(folder, "--out", bundle, "--backend", "torchscript")
    assert code == 0, output
    pins, options = _requirements(bundle)
    assert f"torch=={metadata.version('torch')}" in pins
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    assert all(PIN.match(pin) for pin in pins)
    assert not {pin.partition("==")[0] for pin in pins} & {"onnx", "nncf", "openvino", "onnxruntime"}
    assert (bundle / "artifacts" / "model.ts").is_file() and not (
        bundle / "artifacts" / "model.onnx"
    ).exists()
    assert (bundle / "model_repository" / "mlp" / "1" / "model.onnx").is_file()  # Triton gets the ONNX model


def test_dockerfile_runs_the_server_as_a_non_root_user(onnx_bundle: Path) -> None:
    lines = (onnx_bundle / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [(line.split()[0], line.split(maxsplit=1)[1]) for line in lines if line and line[0] != "#"]
    keywords = [keyword for keyword, _ in instructions]
    argument = dict(instructions)
    assert argument["FROM"] == f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
    assert argument["USER"] not in {"root", "0"}
    assert keywords.index("USER") < keywords.index("CMD")
    install = instructions.index(("RUN", "pip install --no-cache-dir -r requirements.txt"))
    copies = [index for index, (keyword, _) in enumerate(instructions) if keyword == "COPY"]
    assert instructions[copies[0]] == ("COPY", "requirements.txt .")
    assert copies[0] < install < copies[1]  # the install layer is reused while the pins are unchanged
    assert argument["EXPOSE"] == "8000"
    probe = json.loads(argument["HEALTHCHECK"].split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"] and "/v2/health/ready" in probe[2] and "urllib" in probe[2]
    command = json.loads(argument["CMD"])
    assert command[:4] == ["python", "-m", "exporter.serving", "artifacts"]
    assert command[command.index("--backend") + 1] == "onnxruntime"
    assert command[command.index("--port") + 1] == "8000"
    assert "model_repository/" in (onnx_bundle / ".dockerignore").read_text().split()


def test_readme_examples_fit_the_model(folder: Path, onnx_bundle: Path) -> None:
    readme = (onnx_bundle / "README.md").read_text()
    body = json.loads(re.search(r"-d '(\{.*\})'", readme).group(1))  # type: ignore[union-attr]
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["inputs"]] == [("x", "FP32", [4, 16])]
    assert len(body["inputs"][0]["data"]) == 64
    request = json.loads((onnx_bundle / "example_request.json").read_text())
    with np.load(folder / "golden" / "export.inputs.npz") as golden:
        assert np.array_equal(np.array(request["inputs"][0]["data"], np.float32).reshape(4, 16), golden["x"])
    assert "python -m exporter.serving artifacts --backend onnxruntime" in readme
    assert "tritonserver --model-repository=model_repository" in readme
    assert "tritonclient.http" in readme and "docker build" in readme


def _real_inputs(root: Path, rows: int) -> Path:
    """Stand-in real data for the MLP: distinct, structured values no spec draw would give."""
    path = root / "real.npz"
    np.savez(path, x=np.linspace(-3.0, 3.0, rows * 16, dtype=np.float32).reshape(rows, 16))
    return path


def test_example_request_sends_the_golden_inputs_case_cut_to_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _real_inputs(tmp_path, rows=6)
    exported = export_tiny_mlp(tmp_path, targets=("torchscript",), golden_inputs=real)
    package_bundle(exported, tmp_path / "bundle")
    request = json.loads((tmp_path / "bundle" / "example_request.json").read_text())
    with np.load(exported / "golden" / "golden-inputs.inputs.npz") as golden, np.load(real) as given:
        assert np.array_equal(golden["x"], given["x"])  # the case keeps the user's real inputs
        expected = golden["x"]
    assert request["id"] == "golden-inputs" and request["inputs"][0]["shape"] == [6, 16]
    assert np.array_equal(np.array(request["inputs"][0]["data"], np.float32).reshape(6, 16), expected)
    readme = (tmp_path / "bundle" / "README.md").read_text()
    assert "--golden-inputs" in readme and "artifacts/golden/golden-inputs.outputs.npz" in readme

    monkeypatch.setattr("exporter.packaging.example.EXAMPLE_MAX_VALUES", 40)  # two rows of 16 values fit
    package_bundle(exported, tmp_path / "small", force=True)
    request = json.loads((tmp_path / "small" / "example_request.json").read_text())
    assert request["inputs"][0]["shape"] == [2, 16]
    assert np.array_equal(np.array(request["inputs"][0]["data"], np.float32).reshape(2, 16), expected[:2])
    readme = (tmp_path / "small" / "README.md").read_text()
    assert "first 2 rows" in readme and "expected[name][:2]" in readme


@pytest.mark.slow
def test_example_request_sends_a_held_out_real_sample_int8_was_judged_on(tmp_path: Path) -> None:
    spec = InputSpec(tuple(parse_tensor_spec(s) for s in MODELS["mlp"].inputs))
    calibration = write_calibration(spec, tmp_path)
    quantization = {"mode": "dynamic", "samples": 16, "calibration": str(calibration)}
    exported = export_tiny_mlp(tmp_path, quantization=quantization)
    manifest = read_manifest(exported)
    assert manifest.int8 is not None and manifest.int8.judged_on == "real"
    package_bundle(exported, tmp_path / "bundle")
    request = json.loads((tmp_path / "bundle" / "example_request.json").read_text())
    assert request["id"] == "int8-eval-0"
    with np.load(exported / "golden" / "int8-eval.inputs.npz") as kept:
        sample = kept["x.0"]
    assert np.array_equal(np.array(request["inputs"][0]["data"], np.float32).reshape(sample.shape), sample)
    with np.load(exported / "golden" / "export.inputs.npz") as drawn:
        assert not np.array_equal(np.array(request["inputs"][0]["data"], np.float32), drawn["x"].reshape(-1))


def test_server_sources_import_no_torch(onnx_bundle: Path) -> None:
    copied = sorted(
        path.relative_to(onnx_bundle).as_posix() for path in (onnx_bundle / "exporter").rglob("*.py")
    )
    assert "exporter/__init__.py" in copied and "exporter/serving/__main__.py" in copied
    assert "exporter/runners/base.py" in copied  # the server runs the runners verification used
    assert not [p for p in copied if p == "exporter/pipeline.py" or p.startswith("exporter/convert/")]
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import exporter, exporter.serving.artifact, exporter.serving.server, exporter.serving.__main__; "
        "print(exporter.__file__); "
        "print(sorted(m for m in ('torch', 'onnx', 'openvino', 'rich', 'typer') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(onnx_bundle)], capture_output=True, text=True, check=True, cwd="/"
    )
    where, imported = result.stdout.strip().splitlines()
    assert Path(where).is_relative_to(onnx_bundle)
    assert imported == "[]"


def test_a_server_import_outside_the_pins_stops_packaging() -> None:
    _check_covered(["numpy", "uvicorn", "onnxruntime"], backend("onnxruntime"))
    with pytest.raises(
        RuntimeError, match="imports torch, which the pinned onnxruntime requirements do not install"
    ):
        _check_covered(["numpy", "torch"], backend("onnxruntime"))


def test_tampered_folder_is_refused_and_nothing_is_written(folder: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    model = tampered / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    code, output = _package(tampered, "--out", tmp_path / "bundle")
    assert code == 2
    assert "modified after export" in output and len(output.strip().splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tampered"]


def test_existing_out_needs_force(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, output = _package(folder, "--out", out)
    assert code == 2 and "--force" in output
    assert [path.name for path in out.iterdir()] == ["old.txt"]
    code, output = _package(folder, "--out", out, "--force")
    assert code == 0, output
    assert not (out / "old.txt").exists() and (out / "Dockerfile").is_file()


@pytest.mark.parametrize(
    ("backend", "message"), [("tensorrt", "not a backend exporter serves"), ("openvino", "not shipped")]
)
def test_unknown_or_unshipped_backend_is_refused(
    folder: Path, tmp_path: Path, backend: str, message: str
) -> None:
    code, output = _package(folder, "--out", tmp_path / "bundle", "--backend", backend)
    assert code == 2 and message in output
    assert not (tmp_path / "bundle").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(url: str, server: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited with {server.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout} s")


@pytest.mark.slow
def test_bundle_installs_into_an_empty_venv_and_serves_without_torch(
    folder: Path, onnx_bundle: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    started = time.monotonic()
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            "requirements.txt",
        ],
        cwd=onnx_bundle,
        check=True,
    )
    print(f"pip install of the ONNX bundle: {time.monotonic() - started:.1f} s")
    assert (
        subprocess.run([str(python), "-c", "import torch"], check=False, capture_output=True).returncode != 0
    )

    port = _free_port()
    command = json.loads(
        next(
            line for line in (onnx_bundle / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
        )[4:]
    )
    command[0] = str(python)
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    server = subprocess.Popen(
        command, cwd=onnx_bundle, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/v2/health/ready", server, timeout=120)
        manifest = read_manifest(folder)
        with np.load(folder / "golden" / "export.inputs.npz") as arrays:
            inputs = {name: arrays[name] for name in arrays.files}
        body = {
            "inputs": [
                {"name": name, "shape": list(a.shape), "datatype": "FP32", "data": a.reshape(-1).tolist()}
                for name, a in inputs.items()
            ]
        }
        request = urllib.request.Request(
            f"{base}/v2/models/{manifest.name}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        with np.load(folder / "golden" / "export.outputs.npz") as expected:
            for output in answer["outputs"]:
                actual = np.array(output["data"], np.float32).reshape(output["shape"])
                np.testing.assert_allclose(
                    actual,
                    expected[output["name"]],
                    atol=manifest.tolerance.atol,
                    rtol=manifest.tolerance.rtol,
                )
            assert {o["name"] for o in answer["outputs"]} == set(expected.files)
        readme = (onnx_bundle / "README.md").read_text()
        client = re.search(r"```python\n(.*?)```", readme, re.S).group(1)  # type: ignore[union-attr]
        shown = subprocess.run(
            [sys.executable, "-c", client.replace("localhost:8000", f"127.0.0.1:{port}")],
            cwd=onnx_bundle,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        error = float(shown.stdout.split("max abs error vs golden:")[1])
        assert error <= manifest.tolerance.atol + manifest.tolerance.rtol
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            log, _ = server.communicate(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
    assert server.returncode == 0, log
