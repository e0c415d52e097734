"""Quantize stage: int8 candidates from ONNX Runtime and torchao, judged against a parity budget."""

from exporter.quantize.budget import Int8Comparison, ParityBudget, compare_int8
from exporter.quantize.calibration import SampleSet, load_samples
from exporter.quantize.onnx_ort import Int8Formats, choose_formats
from exporter.quantize.search import QuantizationResult, run_quantization
from exporter.quantize.types import Candidate, QuantizeOptions, QuantMode

__all__ = [
    "Candidate",
    "Int8Comparison",
    "Int8Formats",
    "ParityBudget",
    "QuantMode",
    "QuantizationResult",
    "QuantizeOptions",
    "SampleSet",
    "choose_formats",
    "compare_int8",
    "load_samples",
    "run_quantization",
]
