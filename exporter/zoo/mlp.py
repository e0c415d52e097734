"""An MLP classifier with BatchNorm1d, Dropout and Kaiming initialisation.

Why it matters for export: BatchNorm and Dropout behave differently in training and inference. An exported
graph must use BatchNorm's running statistics (usually folded into the preceding Linear) and drop Dropout
entirely; a model accidentally exported in train mode normalises with per-batch statistics and gives
batch-size-dependent outputs, which verification at several batch sizes catches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exporter.zoo._common import warm_batchnorm

__all__ = ["MLPClassifier", "build_mlp"]


class MLPClassifier(nn.Module):
    """Two ``Linear -> BatchNorm1d -> ReLU -> Dropout`` blocks and a linear head.

    Args:
        features: Input features per example.
        hidden: Width of both hidden layers.
        classes: Number of output logits.
        dropout: Dropout probability (only active in train mode).
    """

    def __init__(self, features: int = 32, hidden: int = 64, classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` for features ``x`` of shape ``(B, features)``."""
        h = self.body(x)  # (B, hidden)
        return self.head(h)  # (B, classes)


def build_mlp(
    *, features: int = 32, hidden: int = 64, classes: int = 10, dropout: float = 0.2
) -> MLPClassifier:
    """A seeded :class:`MLPClassifier` with warmed-up BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = MLPClassifier(features, hidden, classes, dropout)
    warm_batchnorm(model, (32, features))
    return model
