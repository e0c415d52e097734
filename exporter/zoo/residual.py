"""A small residual CNN: ResNet basic blocks with identity and 1x1-projection shortcuts.

Why it matters for export: skip connections make the graph a DAG rather than a chain (a tensor is consumed
twice), and a shortcut needs a 1x1 projection when the block changes channels or stride. Every ReLU is its
own module, as quantization workflows that work per module expect: eager-mode fusion names each
conv-bn-relu triple by module, and a module called at two places shares one observer between two different
activations. (torchao 0.18's PT2E X86InductorQuantizer, which ``--quantize`` uses, did accept a reused ReLU
when measured, so this is about keeping the model portable across quantizers.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exporter.zoo._common import warm_batchnorm

__all__ = ["BasicBlock", "ResidualCNN", "build_residual"]


class BasicBlock(nn.Module):
    """``conv-bn-relu-conv-bn`` plus a shortcut, then ReLU.

    The shortcut is the identity when shape is unchanged, else ``Conv2d(1x1, stride) -> BatchNorm2d``.

    Args:
        in_channels: Channels in.
        out_channels: Channels out.
        stride: Stride of the first conv (and of the projection).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()  # a second module, not relu1 reused: quantizers see two distinct calls
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))  # (B, out, H/stride, W/stride)
        h = self.bn2(self.conv2(h))  # (B, out, H/stride, W/stride)
        return self.relu2(h + self.shortcut(x))  # (B, out, H/stride, W/stride)


class ResidualCNN(nn.Module):
    """A conv stem, three basic blocks (16 -> 16 -> 32 -> 64 channels) and a pooled linear head.

    Args:
        in_channels: Image channels.
        width: Channels after the stem; the later stages double it twice.
        classes: Number of output logits.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(
            BasicBlock(width, width),  # identity shortcut
            BasicBlock(width, 2 * width, stride=2),  # projection shortcut
            BasicBlock(2 * width, 4 * width, stride=2),  # projection shortcut
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, classes)

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(B, classes)`` for ``image`` of shape ``(B, C, H, W)``."""
        h = self.stem(image)  # (B, width, H, W)
        h = self.blocks(h)  # (B, 4*width, H/4, W/4)
        return self.head(self.pool(h).flatten(1))  # (B, classes)


def build_residual(*, in_channels: int = 3, width: int = 16, classes: int = 10) -> ResidualCNN:
    """A seeded :class:`ResidualCNN` with warmed-up BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = ResidualCNN(in_channels, width, classes)
    warm_batchnorm(model, (8, in_channels, 32, 32))
    return model
