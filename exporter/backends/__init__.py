"""Backends: every way a model runs, registered once and treated alike.

``registry`` holds one ``BackendSpec`` per backend (and the types a backend's build and verification hand
on); ``_verify`` verifies any backend's candidates against the golden cases. The built-in backends register
themselves when this package is first imported (before any of its modules runs), in listing order: ONNX
Runtime (``onnxruntime.py``), TorchScript (``torchscript.py``), torch.compile and AOTInductor
(``compiled.py``), OpenVINO (``openvino.py``). None of them imports torch, onnxruntime or openvino until a
model is converted or opened, so the server imports the registry.
Import names from the modules that define them; this file only loads the builtins.
"""

from __future__ import annotations

import importlib

for _builtin in ("onnxruntime", "torchscript", "compiled", "openvino"):  # registration order is listing order
    importlib.import_module(f"{__name__}.{_builtin}")
