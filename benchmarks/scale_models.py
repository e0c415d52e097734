"""Transformer encoders with distinct layers at the sizes ``benchmarks/scale.py`` measures.

``nn.TransformerEncoder`` deep-copies its one layer, so each layer's matrices are drawn afresh here: with
identical layers, exporters deduplicate the initializers and a "250M" ONNX model holds one layer's worth.
Seeded random weights: the scale benchmark measures memory and time, not accuracy. Usable as an exporter
factory: ``--model benchmarks/scale_models.py:build_encoder --model-kwargs '{"size": "250m"}'``.
"""

from __future__ import annotations

import torch
from torch import nn

SIZES: dict[str, tuple[int, int]] = {
    "25m": (512, 8),
    "250m": (1024, 20),
    "700m": (1536, 25),
    "1.5b": (2048, 30),
}
"""size -> (d_model, layers); heads d_model / 64, feed-forward 4 x d_model: 12.6 d_model^2 per layer."""


class ScaleEncoder(nn.Module):
    """Float features ``x`` (B, T, d_model) -> the encoder -> a 16-way linear head per position."""

    def __init__(self, d_model: int, layers: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, d_model // 64, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_encoder(size: str = "25m") -> ScaleEncoder:
    d_model, layers = SIZES[size]
    torch.manual_seed(0)
    model = ScaleEncoder(d_model, layers)
    for layer in model.encoder.layers:  # deep copies of one layer until drawn afresh, one by one
        for parameter in layer.parameters():
            if parameter.dim() > 1:
                nn.init.normal_(parameter, std=0.02)
    return model.eval()


def input_spec(size: str) -> str:
    """The exporter's ``--input`` for ``size``: batch 1..2, sequence 4..16 (a 1.5B forward at 16 tokens
    is ~50 GFLOP, a fraction of a second on 2 cores, so verification's seven shapes stay quick)."""
    return f"x:float32:batch=1..2,seq=4..16,{SIZES[size][0]}"
