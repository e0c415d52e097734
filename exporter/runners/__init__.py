"""Runners: one contract, ``run(inputs) -> outputs``, for every way of executing a model.

``base`` holds the contract (``Runner``, ``CallConvention``) and imports no runtime; ``pytorch``,
``onnxruntime`` and ``openvino`` hold one backend's runners each and import their runtime only when a
runner is made, so importing any of them (the server does) loads neither torch nor onnxruntime nor openvino.
"""
