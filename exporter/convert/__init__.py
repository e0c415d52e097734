"""Conversion stage: one module per target."""

from exporter.convert.onnx import (
    ExportAttempt,
    OnnxConversion,
    OnnxConversionRequest,
    OnnxExporterChoice,
    convert_to_onnx,
)

__all__ = [
    "ExportAttempt",
    "OnnxConversion",
    "OnnxConversionRequest",
    "OnnxExporterChoice",
    "convert_to_onnx",
]
