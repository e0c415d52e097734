"""MLServer's custom runtime for the benchmark: an ``MLModel`` running the ONNX Runtime session, the way
MLServer's documentation writes a custom inference runtime (NumpyCodec in and out).

model-settings.json names it ``mlserver_model.OrtModel`` and passes ``parameters.uri`` (the model.onnx) and
``parameters.extra.threads``; ``benchmarks/serve_peers/launch.py`` writes both settings files.
"""

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from ort_session import open_session


class OrtModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self._session = open_session(self.settings.parameters.uri, int(extra["threads"]))
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(None, feed)
        outputs = [
            NumpyCodec.encode_output(name, result)
            for name, result in zip(self._output_names, results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, outputs=outputs)
