"""A Conv-BN-ReLU feature extractor with a pooled linear head, for small RGB images.

Why it matters for export: Conv2d followed by BatchNorm2d is the pattern every inference optimiser fuses
(ONNX simplifiers, ``torch.jit.freeze``, inductor); each fusion rewrites the weights, so this is where a wrong
fold shows up. Global average pooling keeps the head independent of the spatial size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exporter.zoo._common import warm_batchnorm

__all__ = ["ConvClassifier", "build_conv"]


def conv_bn_relu(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Sequential:
    """``Conv2d(3x3, no bias) -> BatchNorm2d -> ReLU``: the bias is redundant before BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ConvClassifier(nn.Module):
    """Three Conv-BN-ReLU blocks (the last two downsample), global average pooling and a linear head.

    Args:
        in_channels: Image channels.
        width: Channels of the first block; later blocks have ``2 * width`` and ``4 * width``.
        classes: Number of output logits.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, width),
            conv_bn_relu(width, 2 * width, stride=2),
            conv_bn_relu(2 * width, 4 * width, stride=2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * width, classes)

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(B, classes)`` for ``image`` of shape ``(B, C, H, W)``."""
        h = self.features(image)  # (B, 4*width, 1, 1)
        return self.head(h.flatten(1))  # (B, classes)


def build_conv(*, in_channels: int = 3, width: int = 16, classes: int = 10) -> ConvClassifier:
    """A seeded :class:`ConvClassifier` with warmed-up BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = ConvClassifier(in_channels, width, classes)
    warm_batchnorm(model, (8, in_channels, 32, 32))
    return model
