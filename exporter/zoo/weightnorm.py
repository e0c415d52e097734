"""A small MLP built from a hand-written weight-normalised Linear (``weight = g * v / ||v||`` per row).

Why it matters for export: the layer's parameters (``v``, ``g``) are not the weight the matmul uses; the
weight is computed in ``forward``. Exporters must either keep that computation in the graph or constant-fold
it (``torch.jit.freeze``, onnxsim and inductor all try), and a checkpoint must round-trip ``v`` and ``g``
rather than a precomputed ``weight``. It is written by hand, as many codebases do, instead of with
``torch.nn.utils.weight_norm``: that deprecated forward pre-hook does not script (torch 2.13:
"AttributeError: 'WeightNorm' object has no attribute '__name__'"), and its parametrization successor renames
the checkpoint keys to ``parametrizations.weight.original0/1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["WeightNormLinear", "WeightNormMLP", "build_weightnorm"]


class WeightNormLinear(nn.Module):
    """``y = x @ (g * v / ||v||_row).T + bias``: direction ``v`` and per-output-row magnitude ``g``.

    Args:
        in_features: Input features.
        out_features: Output features.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(out_features, in_features))  # (out, in)
        self.g = nn.Parameter(torch.empty(out_features))  # (out,)
        self.bias = nn.Parameter(torch.empty(out_features))  # (out,)
        nn.init.kaiming_uniform_(self.v, a=math.sqrt(5))
        with torch.no_grad():
            # Magnitudes that differ from ||v|| so that dropping the normalisation changes the output.
            self.g.copy_(
                torch.linalg.vector_norm(self.v, dim=1) * torch.empty(out_features).uniform_(0.5, 2.0)
            )
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> Tensor:
        """The effective weight ``(out, in)``: each row of ``v`` rescaled to norm ``g``."""
        norm = torch.linalg.vector_norm(self.v, dim=1, keepdim=True)  # (out, 1)
        return self.g.unsqueeze(1) * self.v / norm  # (out, in)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)  # (B, out)


class WeightNormMLP(nn.Module):
    """``WeightNormLinear -> ReLU -> WeightNormLinear -> ReLU -> WeightNormLinear``.

    Args:
        features: Input features.
        hidden: Hidden width.
        classes: Number of output logits.
    """

    def __init__(self, features: int = 32, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = WeightNormLinear(features, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = WeightNormLinear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.head = WeightNormLinear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` for features ``x`` of shape ``(B, features)``."""
        h = self.relu1(self.fc1(x))  # (B, hidden)
        h = self.relu2(self.fc2(h))  # (B, hidden)
        return self.head(h)  # (B, classes)


def build_weightnorm(*, features: int = 32, hidden: int = 64, classes: int = 10) -> WeightNormMLP:
    """A seeded :class:`WeightNormMLP` in eval mode."""
    torch.manual_seed(0)
    return WeightNormMLP(features, hidden, classes).eval()
