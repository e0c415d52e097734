"""A small ResNet trained here on real handwritten digits, big enough to time.

The data is the UCI handwritten digits set bundled in ``examples/digits/digits.npz`` (1797 real 8x8 scans,
its own train/test split: 1438 / 359), upsampled to 32x32 (bilinear). The net: a 3x3 stem (32 channels)
and three residual blocks (32, 64 and 128 channels; the last two halve the resolution), global average
pooling and a linear head: 0.3M parameters, about 50M multiply-adds per image. ``train`` fits it with Adam
and a one-cycle schedule on the train split (random 2-pixel shifts), seeded; the weights are cached in
``benchmarks/results/digits_resnet.pt`` (committed, 1.2 MB), and ``build_digits_resnet`` trains them again
only if that file is missing.

Data, as ``examples/digits/model.py`` gives it (the exporter's ``--calibration`` and ``[quantize]`` forms):
calibration (128 train images), validation (64 other train images, for accuracy-controlled quantizers) and
held-out (the 359 test images, never trained on, with their labels), each one ``(1, 1, 32, 32)`` sample.

    .venv/bin/python benchmarks/digits_resnet.py            # train if needed, print test accuracy
    .venv/bin/python benchmarks/digits_resnet.py --retrain  # train again and overwrite the cache
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
DATA_PATH = HERE.parent / "examples" / "digits" / "digits.npz"
WEIGHTS_PATH = HERE / "results" / "digits_resnet.pt"
SIZE = 32
INPUT_NAMES = ("image",)
SPEC = ("image:float32:batch=1,1,32,32",)
CALIBRATION_COUNT, VALIDATION_COUNT = 128, 64
SEED = 0


class Block(nn.Module):
    """Two 3x3 conv-BN layers with a residual (a 1x1 conv-BN projection when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """``(B, 1, 32, 32)`` images in [0, 1] -> ``(B, 10)`` logits."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
        self.layer1 = Block(widths[0], widths[0])  # 32x32
        self.layer2 = Block(widths[0], widths[1], stride=2)  # 16x16
        self.layer3 = Block(widths[1], widths[2], stride=2)  # 8x8
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(image))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))  # (B, 128) -> (B, 10)


def digits_resnet_layout() -> nn.Module:
    """The untrained net in eval mode, for loading a saved state_dict into."""
    return DigitsResNet().eval()


def build_digits_resnet() -> nn.Module:
    """The trained net in eval mode: the cached weights, trained (seeded, 1-2 min on 2 cores) if missing."""
    if not WEIGHTS_PATH.is_file():
        train(save=True)
    model = DigitsResNet()
    model.load_state_dict(torch.load(WEIGHTS_PATH, weights_only=True)["state_dict"])
    return model.eval()


# --------------------------------------------------------------------------------------------- data


@functools.cache
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of the bundled split: float32 ``(N, 1, 32, 32)`` in [0, 1], int64 ``(N,)``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with np.load(DATA_PATH) as data:
        index = data[f"{split}_idx"]
        images, labels = data["images"][index], data["labels"][index]
    upsampled = F.interpolate(
        torch.from_numpy(images), size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )
    return upsampled.clamp(0, 1).numpy(), labels


def _train_subsets() -> tuple[np.ndarray, np.ndarray]:
    """Disjoint seeded picks of train images: calibration, then validation."""
    order = np.random.default_rng(SEED + 1).permutation(len(load_split("train")[0]))
    return order[:CALIBRATION_COUNT], order[CALIBRATION_COUNT : CALIBRATION_COUNT + VALIDATION_COUNT]


def calibration_samples() -> Iterator[dict[str, np.ndarray]]:
    """128 train images, one ``(1, 1, 32, 32)`` sample each (for ``--calibration FILE.py:NAME``)."""
    images, _ = load_split("train")
    for index in _train_subsets()[0]:
        yield {"image": images[index : index + 1]}


def validation_samples() -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """64 other train images with their labels, for quantizers that validate while they search."""
    images, labels = load_split("train")
    for index in _train_subsets()[1]:
        yield {"image": images[index : index + 1]}, int(labels[index])


def held_out_samples() -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """The 359 test images (never trained on) with their labels, for float vs int8 accuracy."""
    images, labels = load_split("test")
    for index in range(len(labels)):
        yield {"image": images[index : index + 1]}, int(labels[index])


def accuracy(outputs: list[list[np.ndarray]], labels: list[int]) -> float:
    """Top-1 accuracy of the logits (each sample's first output) against the labels."""
    predictions = [int(np.asarray(sample[0]).reshape(-1, 10)[0].argmax()) for sample in outputs]
    return float(np.mean([p == y for p, y in zip(predictions, labels, strict=True)]))


def write_npz(path: Path | str) -> Path:
    """The calibration images as an .npz for ``--calibration FILE.npz``: ``image`` ``(128, 1, 32, 32)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=np.concatenate([s["image"] for s in calibration_samples()]))
    return path


# --------------------------------------------------------------------------------------------- training


@torch.no_grad()
def test_accuracy(model: nn.Module) -> float:
    images, labels = load_split("test")
    model.eval()
    predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predictions == labels).mean())


def _shift(batch: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Each image moved by up to ``pixels`` in x and y (zero fill): the only augmentation."""
    padded = F.pad(batch, (pixels,) * 4)
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * pixels + 1, (len(batch), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + SIZE, dx : dx + SIZE]
    return out


def train(epochs: int = 12, batch_size: int = 64, lr: float = 4e-3, *, save: bool = False) -> nn.Module:
    """Seeded Adam + one-cycle on the train split; returns the net in eval mode (saved if ``save``)."""
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    images, labels = (torch.from_numpy(a) for a in load_split("train"))
    model = DigitsResNet()
    steps = epochs * ((len(labels) + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(_shift(images[index], generator)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        score = test_accuracy(model)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, test {score:.2%}, "
              f"{time.perf_counter() - started:.0f}s")  # fmt: skip
    model.eval()
    if save:
        WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(
            {"state_dict": state, "test_accuracy": score, "epochs": epochs, "seed": SEED}, WEIGHTS_PATH
        )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description="Train (if needed) and evaluate the digits ResNet.")
    parser.add_argument("--retrain", action="store_true", help="train again and overwrite the cached weights")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = train(args.epochs, save=True) if args.retrain else build_digits_resnet()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters / 1e6:.2f}M parameters; test accuracy {test_accuracy(model):.2%} on 359 images")


if __name__ == "__main__":
    main()
