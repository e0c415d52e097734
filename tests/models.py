"""Tiny real models shared by every stage's tests, each with the input specs it is exported with.

Factories are referenced by the CLI as ``tests/models.py:<factory>``; ``MODELS`` maps a short name to the
factory and the ``--input`` specs, so a test can say ``MODELS["attention"]`` and get both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

MODELS_FILE = Path(__file__).resolve()


class MLPWithBatchNorm(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear, Kaiming init; eval mode freezes BN and Dropout."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)  # (B, classes)


class SmallConvNet(nn.Module):
    """Conv-BN-ReLU feature extractor with a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image).flatten(1))  # (B, classes)


class AttentionBlock(nn.Module):
    """Pre-norm self-attention + MLP block over a dynamic sequence."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.norm1(tokens)  # (B, T, C)
        attended, _ = self.attention(h, h, h, need_weights=False)
        tokens = tokens + attended
        return tokens + self.mlp(self.norm2(tokens))  # (B, T, C)


class TwoInputsDictOutput(nn.Module):
    """Two inputs (features and a bool mask) and a nested dict/tuple output."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, object]:
        h = torch.tanh(self.proj(features)) * mask.unsqueeze(-1).to(features.dtype)  # (B, T, C)
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(h.dtype)  # (B, C)
        return {"logits": self.head(pooled), "extras": (pooled, h.amax(dim=(1, 2)))}


class TupleEncoder(nn.Module):
    """A speaker-encoder-like model returning a tuple: embedding, its energy and a score per class."""

    def __init__(self, features: int = 6, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(features, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embedding = torch.tanh(self.proj(x))  # (B, D)
        return embedding, embedding.pow(2).sum(-1), self.head(embedding)  # (B, D), (B,), (B, classes)


class FrozenSeqLen(nn.Module):
    """Turns a dynamic size into a Python int: a trace records it as a constant, freezing the dim."""

    def forward(self, x: Tensor) -> Tensor:
        n = int(x.shape[1])
        return x + torch.arange(n, dtype=x.dtype)


class DataDependentGate(nn.Module):
    """Branches on a tensor's value: torch.export refuses it, the TorchScript-based exporter traces it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.abs().sum() >= 0:  # always true, so the traced branch is the right one
            return torch.relu(self.linear(x))
        return self.linear(x)


class LSTMClassifier(nn.Module):
    """Embedding-free sequence classifier: a 2-layer LSTM over features, last step to logits."""

    def __init__(self, features: int = 12, hidden: int = 24, classes: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence: Tensor) -> Tensor:
        states, _ = self.lstm(sequence)  # (B, T, H)
        return self.head(states[:, -1])  # (B, classes)


class FragileMLP(nn.Module):
    """One hidden unit of ``middle`` fires 2000x larger than the rest: per-tensor int8 on that activation
    wipes out every other unit, so only keeping the layers around it in float meets a parity budget."""

    def __init__(self, features: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.first = nn.Linear(features, hidden)
        self.middle = nn.Linear(hidden, hidden)
        self.last = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 8)
        with torch.no_grad():
            self.middle.weight[0] *= 2000.0
            self.middle.bias[0] = 2000.0
            self.last.weight[:, 0] = 0.0  # the outlier unit does not reach the output

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.first(x))  # (B, H)
        h = torch.relu(self.middle(h))  # (B, H), unit 0 ~ 2000x the others
        h = torch.relu(self.last(h))  # (B, H)
        return self.head(h)  # (B, 8)


class LSTMCellStack(nn.Module):
    """Two LSTMCells stepped over time in a Python loop: script keeps the loop, a trace unrolls it to the
    traced sequence length (a frozen loop count)."""

    def __init__(self, features: int = 6, hidden: int = 12) -> None:
        super().__init__()
        self.hidden = hidden
        self.cells = nn.ModuleList([nn.LSTMCell(features, hidden), nn.LSTMCell(hidden, hidden)])

    def forward(self, sequence: Tensor) -> Tensor:
        batch = sequence.size(0)
        h = [sequence.new_zeros(batch, self.hidden) for _ in range(2)]
        c = [sequence.new_zeros(batch, self.hidden) for _ in range(2)]
        for t in range(sequence.size(1)):
            x = sequence[:, t]  # (B, F)
            for index, cell in enumerate(self.cells):
                h[index], c[index] = cell(x, (h[index], c[index]))
                x = h[index]
        return h[-1]  # (B, H)


class DepthGate(nn.Module):
    """Picks its depth from the input's values: a trace records the depth of its example only."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.layer = nn.Linear(features, features)

    def forward(self, x: Tensor) -> Tensor:
        depth = 3 if float(x.sum()) > 0.0 else 1
        for _ in range(depth):
            x = torch.tanh(self.layer(x))
        return x  # (B, F)


class LogOfLinear(nn.Module):
    """``log`` of a linear layer: NaN wherever the layer is negative, so the reference itself emits NaN."""

    def __init__(self, features: int = 4) -> None:
        super().__init__()
        self.layer = nn.Linear(features, features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(self.layer(x))  # (B, F), NaN where layer(x) < 0


@torch.library.custom_op("exporter_tests::opaque", mutates_args=())
def opaque(x: Tensor) -> Tensor:
    """A custom operator with no ONNX translation: no exporter can convert it."""
    return x * 2


@opaque.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


class UsesOpaqueOp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return opaque(x) + 1


class CeilPoolNet(nn.Module):
    """Fully convolutional with ceil-mode pooling, as face detectors are: torch.export can keep H and W
    dynamic only as multiples of 4, and says so in its "Suggested fixes"."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.MaxPool2d(2, 2, ceil_mode=True),
        )
        self.score = nn.Conv2d(4, 2, 1)
        self.box = nn.Conv2d(4, 4, 1)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(image)  # (B, 4, ceil(H/4), ceil(W/4))
        return self.score(features).softmax(1), self.box(features)


def make_mlp(features: int = 16) -> MLPWithBatchNorm:
    torch.manual_seed(0)
    model = MLPWithBatchNorm(features)
    _warm_batchnorm(model, torch.randn(64, features))
    return model


def make_conv() -> SmallConvNet:
    torch.manual_seed(0)
    model = SmallConvNet()
    _warm_batchnorm(model, torch.randn(16, 3, 16, 16))
    return model


def make_attention() -> AttentionBlock:
    torch.manual_seed(0)
    return AttentionBlock()


def make_two_inputs() -> TwoInputsDictOutput:
    torch.manual_seed(0)
    return TwoInputsDictOutput()


def make_tuple_encoder() -> TupleEncoder:
    return TupleEncoder()


def make_frozen() -> FrozenSeqLen:
    return FrozenSeqLen()


def make_gate() -> DataDependentGate:
    torch.manual_seed(0)
    return DataDependentGate()


def make_lstm() -> LSTMClassifier:
    torch.manual_seed(0)
    return LSTMClassifier()


def make_fragile() -> FragileMLP:
    torch.manual_seed(0)
    return FragileMLP()


def make_cell_stack() -> LSTMCellStack:
    torch.manual_seed(0)
    return LSTMCellStack()


def make_depth_gate() -> DepthGate:
    torch.manual_seed(0)
    return DepthGate()


def make_opaque() -> UsesOpaqueOp:
    return UsesOpaqueOp()


def make_nan_log() -> LogOfLinear:
    torch.manual_seed(0)
    return LogOfLinear()


def make_ceil_pool() -> CeilPoolNet:
    return CeilPoolNet()


def _warm_batchnorm(model: nn.Module, batch: Tensor) -> None:
    """Give BatchNorm non-trivial running stats, as a trained model has."""
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()


@dataclass(frozen=True)
class TinyModel:
    factory: str
    inputs: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{MODELS_FILE}:{self.factory}"

    def build(self) -> nn.Module:
        return globals()[self.factory]().eval()  # type: ignore[no-any-return]


MODELS: dict[str, TinyModel] = {
    "mlp": TinyModel("make_mlp", ("x:float32:batch=4,16",)),
    "conv": TinyModel("make_conv", ("image:float32:batch=2,3,16,16",)),
    "attention": TinyModel("make_attention", ("tokens:float32:batch=2,seq=7,32",)),
    "two_inputs": TinyModel(
        "make_two_inputs", ("features:float32:batch=2,seq=5,8", "mask:bool:batch=2,seq=5")
    ),
    "frozen": TinyModel("make_frozen", ("x:float32:batch=2,seq=5",)),
    "tuple_encoder": TinyModel("make_tuple_encoder", ("x:float32:batch=2,6",)),
    "gate": TinyModel("make_gate", ("x:float32:batch=2,4",)),
    "opaque": TinyModel("make_opaque", ("x:float32:batch=2,4",)),
    "lstm": TinyModel("make_lstm", ("sequence:float32:batch=2,seq=6,12",)),
    "fragile": TinyModel("make_fragile", ("x:float32:batch=2,16",)),
    "cell_stack": TinyModel("make_cell_stack", ("sequence:float32:batch=2,seq=5,6",)),
    "depth_gate": TinyModel("make_depth_gate", ("x:float32:batch=2,8",)),
    "nan_log": TinyModel("make_nan_log", ("x:float32:batch=2,4",)),
    "ceil_pool": TinyModel("make_ceil_pool", ("image:float32:batch=1,3,h=16,w=16",)),
}
