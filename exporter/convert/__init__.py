"""Conversion stage: one module per target (``onnx``, ``torchscript``, ``compile``), each used by the backend
that registers it (``exporter/backends/``)."""
