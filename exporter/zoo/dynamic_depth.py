"""A network whose depth depends on the input's values: 3 residual steps when ``x.sum() > 0``, else 1.

Why it matters for export: this is control flow on data, not on shapes. ``torch.jit.script`` compiles the
``if`` and the loop into ``prim::If`` / ``prim::Loop`` and keeps both depths. ``torch.jit.trace`` and the
TorchScript-based ONNX exporter run the model once and record the depth that example took, silently; the
graph is then wrong for every input that would take the other depth. ``torch.export`` (and so the dynamo ONNX
exporter and AOTInductor) refuses the branch outright: ``float(x.sum())`` is a data-dependent value it cannot
guard on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DynamicDepthNet", "build_dynamic_depth"]


class DynamicDepthNet(nn.Module):
    """Input projection, a value-dependent number of shared residual steps, and a linear head.

    Args:
        features: Input features.
        hidden: Width of the repeated step.
        classes: Number of output logits.
        deep: Steps taken when the input sums to more than zero.
        shallow: Steps taken otherwise.
    """

    def __init__(
        self, features: int = 16, hidden: int = 32, classes: int = 4, deep: int = 3, shallow: int = 1
    ) -> None:
        super().__init__()
        self.deep = deep
        self.shallow = shallow
        self.proj = nn.Linear(features, hidden)
        self.step = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def depth(self, x: Tensor) -> int:
        """How many steps ``x`` takes: decided by its values, so only scripting keeps both choices."""
        return self.deep if float(x.sum()) > 0.0 else self.shallow

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` for ``x`` of shape ``(B, features)``."""
        h = torch.tanh(self.proj(x))  # (B, hidden)
        for _ in range(self.depth(x)):
            h = h + torch.tanh(self.step(h))  # (B, hidden)
        return self.head(h)  # (B, classes)


def build_dynamic_depth(
    *, features: int = 16, hidden: int = 32, classes: int = 4, deep: int = 3, shallow: int = 1
) -> DynamicDepthNet:
    """A seeded :class:`DynamicDepthNet` in eval mode."""
    torch.manual_seed(0)
    return DynamicDepthNet(features, hidden, classes, deep, shallow).eval()
