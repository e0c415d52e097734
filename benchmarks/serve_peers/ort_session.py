"""The ONNX Runtime session every peer server opens: the settings of ``exporter serve``'s own session
(``exporter.runners.onnxruntime.onnxruntime_session`` with ``spinning=False``), in a file that imports only
onnxruntime, so each peer's venv can run it.

``intra_op_num_threads`` threads, inter-op 1, sequential execution, every graph optimization, intra- and
inter-op thread spinning off (with sequential execution and one inter-op thread there is no inter-op pool,
so the inter-op entry changes nothing; it is set so that no peer could spin anywhere).
"""

from __future__ import annotations

import onnxruntime as ort

SPINNING_OFF = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def open_session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in SPINNING_OFF.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
