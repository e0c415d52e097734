"""NVIDIA Triton through PyTriton: the ONNX Runtime session as a Python inference callable behind
``tritonserver``'s C++ HTTP front end and dynamic batcher, as PyTriton's documentation binds a model.

    python pytriton_server.py MODEL.onnx NAME HTTP_PORT GRPC_PORT METRICS_PORT THREADS MAX_BATCH

``@batch`` hands the callable the queued requests stacked along the batch axis; the dynamic batcher keeps
Triton's default queue delay (0 us: a batch runs as soon as the model is free, with whatever is queued) and
``MAX_BATCH`` rows at most. The launcher puts the base Python's lib folder on ``LD_LIBRARY_PATH``: the
Python backend stub that tritonserver starts links against libpython.
"""

import signal
import sys

import numpy as np
from ort_session import open_session
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

NUMPY_OF: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
}
NUMPY_OF |= {"tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def tensors(declared: list) -> list[Tensor]:
    """Triton's per-request shape: the ONNX shape without its batch axis, -1 for a dynamic dim."""
    return [
        Tensor(
            name=t.name,
            dtype=NUMPY_OF[t.type],
            shape=tuple(d if isinstance(d, int) else -1 for d in t.shape[1:]),
        )
        for t in declared
    ]


def stop_on_sigterm(_signal: int, _frame: object) -> None:
    """PyTriton quits on SIGINT (Ctrl+C); SIGTERM takes the same way out, so its context manager stops
    tritonserver and removes its workspace (~/.cache/pytriton/workspace_*)."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    path, name = sys.argv[1], sys.argv[2]
    http_port, grpc_port, metrics_port, threads, max_batch = (int(a) for a in sys.argv[3:8])
    session = open_session(path, threads)
    output_names = [o.name for o in session.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(None, inputs), strict=True))

    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=name,
            infer_func=infer,
            inputs=tensors(session.get_inputs()),
            outputs=tensors(session.get_outputs()),
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher()),
        )
        triton.serve()


if __name__ == "__main__":
    main()
