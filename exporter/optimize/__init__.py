"""Optimize stage: the verified float ONNX graph made faster on CPU, one verified step at a time."""
