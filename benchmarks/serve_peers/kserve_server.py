"""KServe's custom model for the benchmark: a ``kserve.Model`` running the ONNX Runtime session over the
v2 REST protocol, started with ``kserve.ModelServer`` as KServe's custom-predictor documentation does.

    python kserve_server.py MODEL.onnx NAME HTTP_PORT GRPC_PORT THREADS

Per-request log lines are turned off, as in every server measured (``exporter serve`` runs uvicorn with
``access_log=False``): ``enable_latency_logging=False``, and the ``uvicorn.access`` and ``kserve.trace``
loggers (an access line and two timing lines per request by default) at WARNING. KServe's timing middleware
still runs.
"""

import logging
import sys

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.numpy_codec import from_np_dtype
from kserve.utils.utils import generate_uuid
from ort_session import open_session


class OrtModel(Model):
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path, self.threads = path, threads
        self.load()

    def load(self) -> bool:
        self.session = open_session(self.path, self.threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        feed = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(None, feed)
        outputs = [
            InferOutput(name, list(result.shape), from_np_dtype(result.dtype), result)
            for name, result in zip(self.output_names, results, strict=True)
        ]
        return InferResponse(payload.id or generate_uuid(), self.name, outputs)


if __name__ == "__main__":
    path, name, http_port, grpc_port, threads = sys.argv[1:6]
    model = OrtModel(name, path, int(threads))
    server = ModelServer(http_port=int(http_port), grpc_port=int(grpc_port), enable_latency_logging=False)
    for quiet in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    server.start([model])
