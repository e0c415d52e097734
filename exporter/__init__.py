"""exporter: turn a trained PyTorch model into verified, benchmarked deployment artifacts.

The pipeline is ``load -> convert -> verify -> benchmark -> write``; ``export`` runs it all.
"""

from exporter._version import __version__
from exporter.errors import (
    ConversionError,
    ExitCode,
    ExporterError,
    InputSpecError,
    LoadError,
    RecipeError,
    UsageError,
)
from exporter.pipeline import ExportOptions, ExportResult, export
from exporter.recipe import Recipe, load_recipe
from exporter.specs import InputSpec, TensorSpec, parse_tensor_spec

__all__ = [
    "ConversionError",
    "ExitCode",
    "ExportOptions",
    "ExportResult",
    "ExporterError",
    "InputSpec",
    "InputSpecError",
    "LoadError",
    "Recipe",
    "RecipeError",
    "TensorSpec",
    "UsageError",
    "__version__",
    "export",
    "load_recipe",
    "parse_tensor_spec",
]
