"""Helpers shared by the zoo's factories."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["warm_batchnorm"]


def warm_batchnorm(model: nn.Module, shape: tuple[int, ...], *, batches: int = 4) -> None:
    """Give every BatchNorm non-trivial running statistics, as a trained model has, then switch to eval.

    Feeds ``batches`` seeded random batches of ``shape`` in train mode under ``no_grad``: the running mean
    and variance move away from their (0, 1) initial values, so an exporter that folds BatchNorm wrongly, or
    keeps it in training mode, produces visibly different outputs.
    """
    generator = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(shape, generator=generator) * 2.0 + 0.5)
    model.eval()
