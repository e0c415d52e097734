"""The backend registry: a new backend is one registration, and the pipeline, the gate and the documents
pick it up without being edited."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exporter.backends import (
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
from exporter.errors import ExitCode, UsageError
from exporter.gate.reverify import VerifyRequest, verify_artifacts
from exporter.pipeline import ExportOptions, export
from exporter.runners import Runner


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


@pytest.fixture
def toy() -> Iterator[BackendSpec]:
    spec = register(
        BackendSpec(
            name="toy-jit",
            target="toy",
            file="model.toy",
            loader="torch.jit.load",
            build=_build,
            open=_open,
            describe=_describe,
        )
    )
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
