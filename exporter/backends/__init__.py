"""Backends: every way a model runs, registered once and treated alike.

``_registry`` holds one ``BackendSpec`` per backend (and the types a backend's build and verification hand
on); ``_verify`` verifies any backend's candidates against the golden cases. The built-in backends register
themselves when this package is first imported (before any of its modules runs), in listing order: ONNX
Runtime (``onnxruntime.py``), TorchScript (``torchscript.py``), torch.compile and AOTInductor
(``compiled.py``), OpenVINO (``openvino.py``). None of them imports torch, onnxruntime or openvino until a
model is converted or opened, so the server imports the registry.

Import from those modules. The names below still resolve here, lazily, for code written against this
package's former re-exports (a package ``__init__`` that imports its modules makes an import circle with
every module that imports a sibling).
"""

from __future__ import annotations

import importlib
from typing import Any

_VERIFY = ("arbitrate_float_backends", "verify_backend", "verify_built")

for _builtin in ("onnxruntime", "torchscript", "compiled", "openvino"):  # registration order is listing order
    importlib.import_module(f"{__name__}.{_builtin}")


def __getattr__(name: str) -> Any:
    home = "_verify" if name in _VERIFY else "_registry"
    module = importlib.import_module(f"{__name__}.{home}")
    if name not in module.__all__:
        raise AttributeError(f"module 'exporter.backends' has no attribute {name!r}")
    return getattr(module, name)
