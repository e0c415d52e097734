"""Serving: one verified artifacts folder over the Open Inference Protocol (KServe v2), with dynamic
batching, Prometheus metrics and a SIGTERM drain (``exporter serve``, and ``exporter package``'s bundles).

Nothing in this package imports torch unless a TorchScript or AOTInductor artifact is served, so a bundle
of an ONNX artifact installs only ONNX Runtime, numpy and the web stack.
"""
