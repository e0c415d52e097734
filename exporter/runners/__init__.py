"""Runners: one contract, ``run(inputs) -> outputs``, for every way of executing a model.

``base`` holds the contract (``Runner``, ``CallConvention``) and imports no runtime; ``pytorch``,
``onnxruntime`` and ``openvino`` hold one backend's runners each and import their runtime only when a
runner is made, so importing any of them (the server does) loads neither torch nor onnxruntime nor openvino.

Import from those modules. The names below still resolve here, lazily, for code written against the
single ``exporter/runners.py`` this package replaced.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "CallConvention": "base",
    "Runner": "base",
    "AotInductorRunner": "pytorch",
    "CompiledRunner": "pytorch",
    "EagerRunner": "pytorch",
    "Float64EagerRunner": "pytorch",
    "TorchScriptRunner": "pytorch",
    "flatten_outputs": "pytorch",
    "OnnxRuntimeRunner": "onnxruntime",
    "OpenVinoRunner": "openvino",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'exporter.runners' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
