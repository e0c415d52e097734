"""Open a shipped artifact the way it was verified and call it: ONNX Runtime, OpenVINO, TorchScript,
AOTInductor, each behind one ``ModelRunner`` (``run(inputs) -> outputs``, numpy in and out).

The runtime packages are imported only when their backend is served, so an ONNX bundle needs neither torch
nor OpenVINO. Settings mirror ``exporter.runners`` (what verification and benchmarks used): one intra-op
thread pool of ``threads``, sequential execution, the manifest's OpenVINO plugin config.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.documents.openvino_settings import checked_config
from exporter.serving.artifact import ServedArtifact

__all__ = ["ModelRunner", "onnxruntime_session", "open_runner"]


@dataclass
class ModelRunner:
    """A loaded artifact: ``call`` takes arrays by input name and returns outputs in the model's order."""

    backend: str
    platform: str
    """The KServe v2 ``platform`` string (``onnxruntime_onnx``, ``openvino_xml``, ``pytorch_torchscript``)."""
    call: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    settings: dict[str, str]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.call(inputs)


def open_runner(folder: Path, artifact: ServedArtifact, threads: int, input_names: list[str]) -> ModelRunner:
    """Load ``artifact`` from ``folder`` with ``threads`` intra-op threads."""
    path = folder / artifact.file
    if artifact.runtime == "onnxruntime":
        return _onnxruntime(path, artifact, threads)
    if artifact.runtime == "openvino":
        return _openvino(path, artifact, threads)
    return _torch(path, artifact, threads, input_names)


def onnxruntime_session(path: Path, threads: int, spinning: bool = False) -> Any:
    """The CPU session the server runs: ``threads`` intra-op threads, sequential, every graph optimization,
    as ``exporter.runners`` verified it.

    Without ``spinning``, the intra-op threads sleep between calls instead of spinning: a server's threads
    share the cores with its event loop, and on 2 cores the spinning cost a core of CPU at 2.3-4.4 ms of
    server CPU per request and fewer requests/s under 32 clients (``benchmarks/serve.py``), for 0.05 ms
    less per call on a lone client. ``spinning=True`` is ONNX Runtime's default (the in-process baseline).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnxruntime(path: Path, artifact: ServedArtifact, threads: int) -> ModelRunner:
    import onnxruntime as ort

    session = onnxruntime_session(path, threads)

    def call(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(session.run(None, inputs))
        except Exception as error:
            raise RuntimeError(_short_ort_error(str(error))) from None

    settings = {"intra_op_num_threads": str(threads), "onnxruntime": ort.__version__}
    return ModelRunner(artifact.backend, "onnxruntime_onnx", call, settings)


def _openvino(path: Path, artifact: ServedArtifact, threads: int) -> ModelRunner:
    import openvino as ov

    config = checked_config(artifact.config or {})
    config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    count = len(compiled.outputs)

    def call(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            request.infer({n: np.ascontiguousarray(a) for n, a in inputs.items()})
        except Exception as error:
            raise RuntimeError(_first_useful_line(str(error))) from None
        return [np.array(request.get_output_tensor(i).data) for i in range(count)]

    return ModelRunner(artifact.backend, "openvino_xml", call, {**config, "openvino": ov.__version__})


def _torch(path: Path, artifact: ServedArtifact, threads: int, input_names: list[str]) -> ModelRunner:
    import torch

    torch.set_num_threads(threads)
    if artifact.backend == "aotinductor":
        from torch._inductor import aoti_load_package

        function: Any = aoti_load_package(str(path))
        positional = list(artifact.call.positional) if artifact.call else input_names
        keyword = list(artifact.call.keyword) if artifact.call else []
        platform = "pytorch_aotinductor"
    else:
        function = torch.jit.load(str(path), map_location="cpu")
        positional, keyword = input_names, []
        platform = "pytorch_torchscript"

    def call(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = {n: torch.from_numpy(np.require(a, requirements=["C", "W"])) for n, a in inputs.items()}
        try:
            with torch.inference_mode():
                result = function(*(tensors[n] for n in positional), **{n: tensors[n] for n in keyword})
        except Exception as error:
            raise RuntimeError(_first_useful_line(str(error))) from None
        return [leaf.detach().cpu().numpy() for leaf in _leaves(result)]

    return ModelRunner(
        artifact.backend, platform, call, {"threads": str(threads), "torch": torch.__version__}
    )


def _leaves(result: Any) -> list[Any]:
    """Output tensors in pytree order (the order the manifest's output names follow)."""
    from torch.utils import _pytree as pytree

    return [leaf for leaf in pytree.tree_leaves(result) if hasattr(leaf, "detach")]


def _first_useful_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '", "Traceback"))]
    return (useful or lines or [text])[0][:300]


_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def _short_ort_error(text: str) -> str:
    node = _ORT_NODE.search(text)
    tail = text.rsplit(" was false. ", 1)[-1] if " was false. " in text else text.splitlines()[0]
    tail = re.sub(r"^.*?Status Message: ", "", tail).strip()
    return (f"{node.group(1)} node '{node.group(2)}': {tail}" if node else tail)[:300]
