"""The backend registry: a new backend is one registration, and the pipeline, the gate and the documents
pick it up without being edited."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.backends.registry import (
    ArtifactCandidate,
    BackendSpec,
    BuildContext,
    BuiltBackend,
    OpenContext,
    backend,
    backends,
    register,
    targets,
    unregister,
)
from exporter.backends.target_names import TARGET_BACKENDS, TARGETS
from exporter.cli import app
from exporter.errors import ExitCode, UsageError
from exporter.gate.reverify import VerifyRequest, verify_artifacts
from exporter.packaging.bundle import bundle_requirements
from exporter.pipeline import ExportOptions, export
from exporter.runners.base import Runner
from tests.conftest import export_tiny_mlp
from tests.test_serve import ROOT, Server, body_of, free_port, golden, wait_ready


class ToyRunner(Runner):
    """Runs a traced archive through ``torch.jit.load``, but under another name: the toy backend."""

    name = "toy-jit"

    def __init__(self, path: Path, names: tuple[str, ...]) -> None:
        super().__init__(names)
        self.module: Any = torch.jit.load(str(path))

    def close(self) -> bool:
        self.module = None
        return True

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            output = self.module(*(torch.from_numpy(inputs[n]) for n in self.input_names))
        return [output.numpy()]


def _open(path: Path, context: OpenContext) -> Runner:
    return ToyRunner(path, context.spec.names)


def _build(context: BuildContext) -> BuiltBackend:
    context.work_dir.mkdir(parents=True, exist_ok=True)
    path = context.work_dir / "model.toy"
    example = tuple(torch.from_numpy(a) for a in context.golden[0].inputs.values())
    torch.jit.save(torch.jit.trace(context.loaded.module, example), str(path))
    opened = OpenContext(context.options.spec, context.options.threads)
    return BuiltBackend(
        candidates=[ArtifactCandidate("traced", path, partial(_open, path, opened))],
        summary="toy: traced",
        conversion={"made_by": "the toy backend"},
    )


def _describe(entry: Mapping[str, Any]) -> list[str]:
    return [f"- Toy: {entry['conversion']['made_by']} shipped `{entry['file']}`"]


TOY = BackendSpec(
    name="toy-jit",
    target="toy",
    file="model.toy",
    loader="torch.jit.load",
    build=_build,
    open=_open,
    describe=_describe,
    runtime="torch",
    platform="pytorch_toy",
    requirements=("torch",),
    help="a traced archive under another name (the registry test's toy)",
)
"""Everything serve and package need is on the record: no table elsewhere names it."""


@pytest.fixture
def toy() -> Iterator[BackendSpec]:
    spec = register(TOY)
    yield spec
    unregister(spec.name)


def test_the_builtin_backends_are_registered_in_order() -> None:
    names = [spec.name for spec in backends()]
    assert names[:8] == [
        "onnxruntime",
        "onnxruntime-optimized",
        "onnxruntime-int8",
        "torchscript",
        "torch-compile",
        "aotinductor",
        "openvino",
        "openvino-lossy",
    ]
    assert TARGETS == targets() == ("onnx", "torchscript", "compile", "openvino")
    assert TARGET_BACKENDS["compile"] == ("torch-compile", "aotinductor")
    with pytest.raises(UsageError, match="unknown backend 'nope'"):
        backend("nope")


def test_a_registered_backend_is_verified_timed_listed_and_gated_without_touching_the_pipeline(
    toy: BackendSpec, options_for: Callable[..., ExportOptions]
) -> None:
    assert "toy" in targets()
    result = export(options_for("mlp", targets=("toy",)))
    assert result.exit_code is ExitCode.OK
    assert [b.backend for b in result.backends] == ["toy-jit"]
    assert result.backends[0].shipped_parity.passed and len(result.backends[0].parity[0].cases) >= 3
    assert {s.backend for s in result.latency} == {"pytorch-eager", "toy-jit"}
    folder = result.out_dir
    report = json.loads((folder / "report.json").read_text())
    assert [b["backend"] for b in report["backends"]] == ["toy-jit"]
    assert "- Toy: the toy backend shipped `model.toy`" in (folder / "report.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["artifacts"] == [
        {
            "backend": "toy-jit",
            "file": "model.toy",
            "candidate": "traced",
            "verified": True,
            "loader": "torch.jit.load",
        }
    ]
    gate = verify_artifacts(VerifyRequest(folder, threads=1))
    assert gate.exit_code is ExitCode.OK
    assert any(c.name == "parity toy-jit" and c.passed for c in gate.checks)


# --- serve and package read the same record ------------------------------------------------------------

SERVE_TOY = (
    "import sys\n"
    "from exporter.backends.registry import register\n"
    "from tests.test_backend_registry import TOY\n"
    "register(TOY)\n"
    "from exporter.serving.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
"""The server's own entry point, in a process where the toy backend is registered first (as a deployment
that ships a backend of its own would register it)."""


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny MLP exported by the toy backend alone, with the toy registered for the module's tests."""
    register(TOY)
    try:
        yield export_tiny_mlp(tmp_path_factory.mktemp("toy"), targets=("toy",))
    finally:
        unregister(TOY.name)


def test_the_toy_record_says_everything_serve_and_package_need() -> None:
    assert TOY.servable and TOY.runtime == "torch" and TOY.platform == "pytorch_toy"
    assert TOY.triton_platform is None and TOY.float_source is None


def test_a_registered_backend_is_verified_from_its_folder(toy_folder: Path) -> None:
    manifest = json.loads((toy_folder / "manifest.json").read_text())
    assert [(a["backend"], a["file"], a["verified"]) for a in manifest["artifacts"]] == [
        ("toy-jit", "model.toy", True)
    ]
    result = CliRunner().invoke(app, ["verify", str(toy_folder)])
    assert result.exit_code == 0, result.output
    assert "toy-jit" in result.output


def test_a_registered_backend_is_served_without_touching_the_server(toy_folder: Path) -> None:
    """The real server (start-up golden check included) serves the toy's file and answers as eager did."""
    port = free_port()
    command = [sys.executable, "-c", SERVE_TOY, str(toy_folder), "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(
        [*command, "--backend", "toy-jit"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process, port)
    try:
        wait_ready(server)
        status, metadata = server.request("GET", "/v2/models/mlp")
        assert status == 200 and metadata["platform"] == "pytorch_toy", metadata
        inputs, outputs = golden(toy_folder)[0]
        status, answer = server.infer(body_of(inputs["x"]))
        assert status == 200, answer
        served = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(outputs["output"].shape)
        np.testing.assert_allclose(served, outputs["output"], rtol=1e-4, atol=1e-5)
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr
    assert "toy-jit (model.toy)" in stderr


def test_a_registered_backend_is_packaged_without_touching_the_bundle(
    toy_folder: Path, tmp_path: Path
) -> None:
    """``exporter package --backend toy-jit``: the toy's file, its requirements beside the server's, no
    Triton repository (the toy names no Triton platform)."""
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["package", str(toy_folder), "--out", str(out), "--backend", "toy-jit"])
    assert result.exit_code == 0, result.output
    assert (out / "artifacts" / "model.toy").read_bytes() == (toy_folder / "model.toy").read_bytes()
    pins = {
        line.partition("==")[0]
        for line in (out / "requirements.txt").read_text().splitlines()
        if line and not line.startswith(("#", "-"))
    }
    assert set(bundle_requirements(TOY)) <= pins
    assert not pins & {"onnxruntime", "openvino"}
    assert not (out / "model_repository").exists()
    readme = (out / "README.md").read_text()
    assert "**toy-jit**" in readme and "--backend toy-jit" in readme
