"""Benchmark models with random weights, built without downloads: a ResNet-18, a small BERT-like encoder
and an LSTM sequence classifier.

Each builder is also a factory for the exporter (the defaults give the benchmark shapes), e.g.
``--model benchmarks/models.py:build_resnet18``, ``:build_bert_encoder`` or ``:build_lstm_classifier``.
Weights are seeded (``torch.manual_seed(0)``), so two calls build the same model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "BertEncoder",
    "LstmClassifier",
    "ResNet18",
    "build_bert_encoder",
    "build_lstm_classifier",
    "build_resnet18",
    "resnet18_layout",
    "synthetic_images",
]

SEED = 0


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual (projected when the shape changes)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 layout (torchvision's module names): 7x7 stem, maxpool, 4 stages of 2 BasicBlocks, fc."""

    def __init__(self, num_classes: int = 1000, layers: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        stages = []
        for index, (channels, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                stage.append(BasicBlock(in_channels, channels, stride if block == 0 else 1))
                in_channels = channels
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_resnet(model: ResNet18) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


IMAGE_CLASSES = 10  # classes of synthetic_images; the head's other logits are fitted to zero
HEAD_FIT_IMAGES = 16  # per class, drawn with seeds no benchmark input uses


def synthetic_images(seed: int, batch: int = 1, *, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(B, 3, 224, 224)`` float32 images of ``IMAGE_CLASSES`` kinds, and their labels.

    Each class is a fixed colour cast and an oriented grating of its own frequency (seeded by the class, so
    every call agrees); each image adds its own phase, contrast, brightness and pixel noise. They stand in for
    real photos: a random-weight network has no reason to separate white noise, and on noise its 1000 logits
    are near-ties (the runner-up within 0.12 std of the top logit, median), so top-1 agreement measured there
    says more about ties than about int8. On these images the fitted head is right about 84% of the time
    (160 held-out images) with margins that vary as a trained classifier's do.
    """
    rng = np.random.default_rng(seed)
    labels = (
        np.full(batch, label, dtype=np.int64)
        if label is not None
        else rng.integers(0, IMAGE_CLASSES, size=batch).astype(np.int64)
    )
    grid = np.linspace(-1.0, 1.0, 224, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((batch, 3, 224, 224), dtype=np.float32)
    for index, cls in enumerate(labels):
        style = np.random.default_rng(10_000 + int(cls))
        colour = style.normal(0.0, 0.3, size=3).astype(np.float32)
        angle, frequency = style.uniform(0, np.pi), style.uniform(2.0, 12.0)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(frequency * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        contrast, brightness = rng.uniform(0.2, 0.8), rng.normal(0.0, 0.2)
        noise = rng.normal(0.0, 1.0, size=(3, 224, 224))
        images[index] = colour[:, None, None] + contrast * wave[None] + brightness + noise
    return images, labels


def build_resnet18(num_classes: int = 1000) -> nn.Module:
    """A ResNet-18 with seeded random convolutions, BatchNorm statistics from synthetic images, and a linear
    head fitted (ridge regression on the pooled features) to the ``IMAGE_CLASSES`` classes of
    ``synthetic_images``: a classifier whose decisions have margins, without downloading weights."""
    torch.manual_seed(SEED)
    model = ResNet18(num_classes)
    _init_resnet(model)
    fit = [synthetic_images(90_000 + c, HEAD_FIT_IMAGES, label=c)[0] for c in range(IMAGE_CLASSES)]
    images = torch.from_numpy(np.concatenate(fit))
    labels = torch.arange(IMAGE_CLASSES).repeat_interleave(HEAD_FIT_IMAGES)
    model.train()
    with torch.no_grad():
        for chunk in images.split(16):
            model(chunk)
        model.eval()
        features = torch.cat([_pooled_features(model, chunk) for chunk in images.split(16)])  # (N, 512)
        mean = features.mean(dim=0)
        centred = features - mean
        targets = torch.zeros(len(labels), num_classes)
        targets[torch.arange(len(labels)), labels] = 1.0
        # Ridge strength: the largest whose held-out accuracy (160 other images) was within one standard
        # error of the best over 1e-3..1e2 (the one-standard-error rule): 0.838 here, best 0.844 at 0.1.
        ridge = 1.0 * centred.pow(2).sum() / len(labels)
        gram = centred.T @ centred + ridge * torch.eye(centred.shape[1])
        weight = torch.linalg.solve(gram, centred.T @ targets).T  # (classes, 512)
        model.fc.weight.copy_(weight)
        model.fc.bias.copy_(targets.mean(dim=0) - weight @ mean)
    return model


def resnet18_layout(num_classes: int = 1000) -> nn.Module:
    """The ResNet-18 modules alone, for loading a saved ``build_resnet18`` state_dict without refitting."""
    return ResNet18(num_classes).eval()


def _pooled_features(model: ResNet18, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


class BertEncoder(nn.Module):
    """A ``transformers`` BertModel whose output is the attention-masked mean of its last hidden state."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def build_bert_encoder(
    layers: int = 6, hidden: int = 384, heads: int = 12, vocab: int = 30522, max_len: int = 512
) -> nn.Module:
    """A BERT-like encoder (random weights from a config, nothing downloaded), returning (B, hidden)."""
    from transformers import BertConfig, BertModel

    config_kwargs: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": max_len,
    }
    if hasattr(BertConfig(), "_attn_implementation"):  # transformers >= 4.36 picks sdpa unless told
        config_kwargs["attn_implementation"] = "eager"
    torch.manual_seed(SEED)
    config = BertConfig(**config_kwargs)
    model = BertEncoder(BertModel(config, add_pooling_layer=False))
    return model.eval()


class LstmClassifier(nn.Module):
    """A stacked LSTM over ``(B, steps, features)`` whose last step's output feeds a linear head.

    The recurrent weights dominate its compute, which is what int8 (dynamic quantization of ``nn.LSTM`` and
    of ONNX ``LSTM`` nodes) is meant to speed up; a CNN or an encoder does not exercise that path.
    """

    def __init__(
        self, features: int = 128, hidden: int = 256, layers: int = 2, num_classes: int = 20
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)
        return self.head(output[:, -1])


def build_lstm_classifier(
    features: int = 128, hidden: int = 256, layers: int = 2, num_classes: int = 20
) -> nn.Module:
    """A 2-layer LSTM classifier (input ``(B, 64, 128)`` in the benchmarks) with PyTorch's seeded init."""
    torch.manual_seed(SEED)
    return LstmClassifier(features, hidden, layers, num_classes).eval()
