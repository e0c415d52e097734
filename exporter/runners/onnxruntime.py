"""ONNX Runtime's runner: an ONNX file in a CPU session with a fixed intra-op thread count.

onnxruntime is imported when a session is opened, not when this module is imported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter._heap import trim_heap
from exporter.runners.base import Runner

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["OnnxRuntimeRunner", "onnxruntime_session", "short_ort_error"]


def onnxruntime_session(path: Path, threads: int, spinning: bool = True) -> ort.InferenceSession:
    """The CPU session every face runs: ``threads`` intra-op threads, sequential, every graph optimization.

    ``spinning=False`` lets the intra-op threads sleep between calls instead of spinning (ONNX Runtime's
    default). A server turns it off: its threads share the cores with its event loop, and on 2 cores the
    spinning cost a core of CPU at 2.3-4.4 ms of server CPU per request and fewer requests/s under 32
    clients (``benchmarks/serve.py``), for 0.05 ms less per call on a lone client.

    Opened from the path, never from a loaded proto. Memory, measured on a 0.94 GiB encoder: with external
    data ONNX Runtime maps the ``.data`` file and prepacks the MatMul weights into its own memory, dropping
    the mapping (1.02 GiB peak: one copy); a self-contained model peaks at 1.35 GiB (its proto is parsed
    first). ``session.disable_prepacking`` keeps the file mapped instead of packing (same RSS, slower
    matmuls), so prepacking stays on.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # run errors are raised and reported by us, not logged by ORT
    ort.set_default_logger_severity(4)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ONNX Runtime CPU session (``onnxruntime_session``)."""

    name = "onnxruntime"

    def __init__(
        self, model_path: Path, threads: int, name: str = "onnxruntime", spinning: bool = True
    ) -> None:
        self.name = name
        session = onnxruntime_session(model_path, threads, spinning)
        self.session: ort.InferenceSession | None = session
        super().__init__([i.name for i in session.get_inputs()])
        self.output_names = [o.name for o in session.get_outputs()]

    def close(self) -> bool:
        """Drop the session and return its freed buffers to the system (``exporter._heap.trim_heap``), so
        the next session of a big model does not open on top of them."""
        if self.session is not None:
            self.session = None
            trim_heap()
        return True

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.session is None:
            raise RuntimeError(f"{self.name}: the session was closed")
        try:
            return list(self.session.run(None, inputs))
        except Exception as error:
            raise RuntimeError(short_ort_error(str(error))) from error


_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def short_ort_error(text: str) -> str:
    """ONNX Runtime errors carry source paths and assertion text; keep the node and the final sentence."""
    node = _ORT_NODE.search(text)
    tail = text.rsplit(" was false. ", 1)[-1] if " was false. " in text else text.splitlines()[0]
    tail = re.sub(r"^.*?Status Message: ", "", tail).strip()
    return f"{node.group(1)} node '{node.group(2)}': {tail}" if node else tail
