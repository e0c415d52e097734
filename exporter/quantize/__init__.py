"""Quantize stage: lossy (int8, int4, bf16) candidates from ONNX Runtime, torchao/PT2E and OpenVINO/NNCF, each
judged against the parity budget and timed; the fastest that passes ships beside the float model."""
