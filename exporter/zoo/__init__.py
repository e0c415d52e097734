"""The recipe zoo: small, realistic model patterns, each with a seeded factory and a recipe that exports it.

Every pattern stresses a different part of export: BatchNorm folding, residual graphs, dynamic sequence
lengths through attention, recurrent layers, data-dependent routing, parameters transformed in ``forward``
and control flow that depends on input values. ``recipes/zoo_<name>.toml`` names each factory as
``exporter.zoo.<module>:<factory>`` and loads the weights ``python -m exporter.zoo.build_checkpoints`` saved.

Factories take keyword arguments with defaults, seed ``torch.manual_seed(0)`` themselves and return the model
in eval mode, so two builds give identical weights.
"""

from __future__ import annotations

__all__ = ["ZOO"]

ZOO: dict[str, str] = {
    "mlp": "exporter.zoo.mlp:build_mlp",
    "conv": "exporter.zoo.conv:build_conv",
    "residual": "exporter.zoo.residual:build_residual",
    "attention": "exporter.zoo.attention:build_attention",
    "lstm": "exporter.zoo.lstm:build_lstm",
    "lstm_cells": "exporter.zoo.lstm:build_lstm_cells",
    "moe": "exporter.zoo.moe:build_moe",
    "weightnorm": "exporter.zoo.weightnorm:build_weightnorm",
    "dynamic_depth": "exporter.zoo.dynamic_depth:build_dynamic_depth",
}
"""Recipe name -> ``package.module:factory`` building that model."""
