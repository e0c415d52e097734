"""exporter: turn a trained PyTorch model into verified, benchmarked deployment artifacts.

The pipeline is ``load -> convert -> verify -> optimize -> quantize -> benchmark -> write``; ``export``
runs it all (``exporter/pipeline.py`` orders the stages, ``exporter/stages/`` holds them). The names below
are the Python API: ``export`` and its ``ExportOptions``/``ExportResult``, recipes, input specs and the
exception family with its exit codes.

Names are imported on first use (PEP 562), so ``exporter.serving`` runs a model without importing torch:
a serving bundle for an ONNX artifact does not install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter._lazy import lazy_attributes
from exporter._version import __version__

if TYPE_CHECKING:
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
    from exporter.recipe.document import Recipe, load_recipe
    from exporter.specs.inputs import InputSpec, TensorSpec, parse_tensor_spec

_HOMES = {
    "exporter.errors": (
        "ConversionError",
        "ExitCode",
        "ExporterError",
        "InputSpecError",
        "LoadError",
        "RecipeError",
        "UsageError",
    ),
    "exporter.pipeline": ("ExportOptions", "ExportResult", "export"),
    "exporter.recipe.document": ("Recipe", "load_recipe"),
    "exporter.specs.inputs": ("InputSpec", "TensorSpec", "parse_tensor_spec"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

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


__getattr__ = lazy_attributes(__name__, _HOME_OF)
