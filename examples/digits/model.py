"""A small CNN for the UCI 8x8 handwritten digits, plus a loader for the bundled data.

The data lives in ``digits.npz`` next to this file (see ``DATA.md``); the trained
weights are in ``digits_cnn.pt`` (see ``train.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch import Tensor, nn

DATA_PATH = Path(__file__).with_name("digits.npz")


class DigitsCNN(nn.Module):
    """Two conv blocks and a two-layer MLP head for ``(B, 1, 8, 8)`` digit images.

    Args:
        num_classes: Number of output logits.
        width: Channels of the first conv layer; the second has ``2 * width``.
        dropout: Dropout probability before the final linear layer.
    """

    def __init__(self, num_classes: int = 10, width: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, 64),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(64, num_classes),
        )

    def forward(self, image: Tensor) -> Tensor:
        """Compute class logits.

        Args:
            image: Float tensor of shape ``(B, 1, 8, 8)`` with values in ``[0, 1]``.

        Returns:
            Logits of shape ``(B, num_classes)``.
        """
        x = self.features(image)  # (B, 1, 8, 8) -> (B, 2*width, 4, 4)
        return self.classifier(x)  # (B, 2*width, 4, 4) -> (B, num_classes)


def build_model(num_classes: int = 10, width: int = 64) -> DigitsCNN:
    """Build an untrained :class:`DigitsCNN`.

    Args:
        num_classes: Number of output logits.
        width: Channels of the first conv layer.

    Returns:
        A freshly initialised model.
    """
    return DigitsCNN(num_classes=num_classes, width=width)


def load_digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Load one split of the bundled digits data.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: float32 ``(N, 1, 8, 8)`` in ``[0, 1]`` and int64 ``(N,)``.

    Raises:
        ValueError: If ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with np.load(DATA_PATH) as data:
        idx = data[f"{split}_idx"]
        return data["images"][idx], data["labels"][idx]


def calibration_samples() -> Iterator[dict[str, np.ndarray]]:
    """Training images, one per sample, for int8 calibration (``--calibration ...:calibration_samples``)."""
    images, _ = load_digits("train")
    for image in images:
        yield {"image": image[None]}  # (1, 1, 8, 8)


def held_out_samples() -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Held-out test images with their labels, for float vs int8 accuracy."""
    images, labels = load_digits("test")
    for image, label in zip(images, labels, strict=True):
        yield {"image": image[None]}, int(label)


def accuracy(outputs: list[list[np.ndarray]], labels: list[int]) -> float:
    """Top-1 accuracy of the logits (each sample's first output) against the labels."""
    predictions = [int(sample[0].argmax()) for sample in outputs]
    return float(np.mean([p == y for p, y in zip(predictions, labels, strict=True)]))
