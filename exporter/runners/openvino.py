"""OpenVINO's runner: a model (IR ``.xml`` or ONNX) compiled for the CPU plugin with explicit settings.

openvino is imported when a model is compiled, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from exporter._heap import page_out_file, trim_heap
from exporter.runners.base import Runner, first_useful_line

__all__ = ["OpenVinoRunner", "input_name"]


def input_name(port: Any) -> str:
    """The name a model input is fed by. A port may carry several (a decoder's ``past_key_values.0.key``
    converted from ONNX also answers to ``/Concat_output_0``) and ``get_any_name`` may return the internal
    one; graph-internal names start with ``/``."""
    first = port.get_any_name()
    public = sorted(name for name in port.get_names() if not name.startswith("/"))
    return first if first in public or not public else public[0]


class OpenVinoRunner(Runner):
    """An OpenVINO model compiled for the CPU plugin.

    ``config`` is what the manifest records (``INFERENCE_PRECISION_HINT``, ``PERFORMANCE_HINT``,
    ``INFERENCE_NUM_THREADS``), so a verify run or a server compiles the model exactly as it was verified:
    the plugin's own default precision is bf16 on CPUs that have it, which is a lossy choice.
    """

    name = "openvino"

    def __init__(self, model_path: Path, config: Mapping[str, str], name: str = "openvino") -> None:
        import openvino as ov

        self.name = name
        core = ov.Core()
        self.compiled: Any = core.compile_model(str(model_path), "CPU", dict(config))
        self.request: Any = self.compiled.create_infer_request()
        super().__init__([input_name(port) for port in self.compiled.inputs])
        self.output_count = len(self.compiled.outputs)
        self.weights_file: Path | None = Path(model_path).with_suffix(".bin")
        """Paged out now and after the first inference, once the plugin has repacked what it reads."""
        page_out_file(self.weights_file)

    def property(self, key: str) -> str:
        """An effective compiled-model property (what the plugin really chose), as text."""
        if self.compiled is None:
            raise RuntimeError(f"{self.name}: the model was released")
        value = self.compiled.get_property(key)
        if hasattr(value, "get_type_name"):  # an element type: "bf16", as the settings spell it
            return str(value.get_type_name())
        return str(getattr(value, "name", value))  # an enum member: its name ("LATENCY")

    def close(self) -> bool:
        """Release the compiled model and return its freed buffers to the system (``_heap.trim_heap``)."""
        if self.compiled is not None:
            self.request = None
            self.compiled = None
            trim_heap()
        return True

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.request is None:
            raise RuntimeError(f"{self.name}: the model was released")
        try:
            self.request.infer({n: np.ascontiguousarray(a) for n, a in inputs.items()})
        except Exception as error:
            raise RuntimeError(first_useful_line(str(error))) from error
        if self.weights_file is not None:
            page_out_file(self.weights_file)
            self.weights_file = None
        return [np.array(self.request.get_output_tensor(i).data) for i in range(self.output_count)]
