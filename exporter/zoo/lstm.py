"""Recurrent sequence models: an ``nn.LSTM`` classifier, and a stack of ``nn.LSTMCell`` stepped by hand.

Why they matter for export:

* ``nn.LSTM`` is one fused operator in eager PyTorch, TorchScript and ONNX (``LSTM``), so those keep the
  sequence length dynamic; ``torch.export`` (which AOTInductor needs) specialises it to the example's length
  ("You marked seq as dynamic but your code specialized it to be a constant (12)").
* The ``LSTMCell`` stack runs an explicit Python ``for t in range(sequence.size(1))`` loop, as custom
  recurrent cells (and decoders) do. ``torch.jit.script`` compiles the loop into a real ``prim::Loop`` that
  runs as many steps as the input has; ``torch.jit.trace`` and the ONNX exporters unroll it for the example
  length only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LSTMCellStack", "LSTMClassifier", "build_lstm", "build_lstm_cells"]


class LSTMClassifier(nn.Module):
    """A multi-layer ``nn.LSTM`` over feature sequences; the last time step's state goes to a linear head.

    Args:
        features: Features per time step.
        hidden: LSTM hidden size.
        layers: Stacked LSTM layers.
        classes: Number of output logits.
    """

    def __init__(self, features: int = 16, hidden: int = 32, layers: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence: Tensor) -> Tensor:
        """Logits ``(B, classes)`` for ``sequence`` of shape ``(B, T, features)``."""
        states, _ = self.lstm(sequence)  # (B, T, hidden)
        return self.head(states[:, -1])  # (B, classes)


class LSTMCellStack(nn.Module):
    """Stacked ``nn.LSTMCell`` layers stepped over time in a Python loop; TorchScript-friendly.

    The state lists are typed, the loop bound is ``sequence.size(1)`` and the cells are iterated by
    ``enumerate`` over an ``nn.ModuleList``, all of which ``torch.jit.script`` supports.

    Args:
        features: Features per time step.
        hidden: Hidden size of every cell.
        layers: Number of stacked cells.
        classes: Number of output logits.
    """

    def __init__(self, features: int = 16, hidden: int = 32, layers: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.hidden = hidden
        self.layers = layers
        self.cells = nn.ModuleList(
            [nn.LSTMCell(features if i == 0 else hidden, hidden) for i in range(layers)]
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence: Tensor) -> Tensor:
        """Logits ``(B, classes)`` for ``sequence`` of shape ``(B, T, features)``."""
        batch = sequence.size(0)
        h: list[Tensor] = [sequence.new_zeros(batch, self.hidden) for _ in range(self.layers)]  # L x (B, H)
        c: list[Tensor] = [sequence.new_zeros(batch, self.hidden) for _ in range(self.layers)]  # L x (B, H)
        for t in range(sequence.size(1)):
            x = sequence[:, t]  # (B, F)
            for index, cell in enumerate(self.cells):
                h[index], c[index] = cell(x, (h[index], c[index]))  # (B, H), (B, H)
                x = h[index]
        return self.head(h[-1])  # (B, classes)


def build_lstm(*, features: int = 16, hidden: int = 32, layers: int = 2, classes: int = 5) -> LSTMClassifier:
    """A seeded :class:`LSTMClassifier` in eval mode."""
    torch.manual_seed(0)
    return LSTMClassifier(features, hidden, layers, classes).eval()


def build_lstm_cells(
    *, features: int = 16, hidden: int = 32, layers: int = 2, classes: int = 5
) -> LSTMCellStack:
    """A seeded :class:`LSTMCellStack` in eval mode."""
    torch.manual_seed(0)
    return LSTMCellStack(features, hidden, layers, classes).eval()
