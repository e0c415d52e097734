"""Train :class:`DigitsCNN` on the bundled digits data and save a checkpoint.

Run from anywhere, e.g. the repository root::

    python examples/digits/train.py

Writes ``digits_cnn.pt`` next to this file: a dict with ``model_state_dict``,
``epoch`` and ``test_accuracy``, loadable with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from model import DigitsCNN, build_model, load_digits  # noqa: E402

CHECKPOINT_PATH = HERE / "digits_cnn.pt"


@torch.no_grad()
def evaluate(model: DigitsCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the accuracy of ``model`` on ``(images, labels)``.

    Args:
        model: The model to evaluate (switched to eval mode).
        images: Float tensor of shape ``(N, 1, 8, 8)``.
        labels: Int64 tensor of shape ``(N,)``.

    Returns:
        Fraction of correctly classified images.
    """
    model.eval()
    pred = model(images).argmax(dim=1)  # (N,)
    return (pred == labels).float().mean().item()


def train(epochs: int = 15, lr: float = 3e-3, batch_size: int = 64, seed: int = 0) -> tuple[DigitsCNN, float]:
    """Train a model with Adam and return it with its test accuracy.

    Args:
        epochs: Number of passes over the training split.
        lr: Adam learning rate.
        batch_size: Mini-batch size.
        seed: Seed for ``torch.manual_seed`` (init, shuffling, dropout).

    Returns:
        ``(model, test_accuracy)``.
    """
    torch.manual_seed(seed)
    x_train, y_train = (torch.from_numpy(a) for a in load_digits("train"))
    x_test, y_test = (torch.from_numpy(a) for a in load_digits("test"))

    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(y_train))
        total = 0.0
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        acc = evaluate(model, x_test, y_test)
        print(f"epoch {epoch:2d}  train loss {total / len(perm):.4f}  test acc {acc:.4f}")
    return model, evaluate(model, x_test, y_test)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Train DigitsCNN on the bundled UCI digits.")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=CHECKPOINT_PATH)
    args = parser.parse_args()

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model, acc = train(epochs=args.epochs, lr=args.lr)
    elapsed = time.perf_counter() - t0

    checkpoint = {"model_state_dict": model.state_dict(), "epoch": args.epochs, "test_accuracy": acc}
    torch.save(checkpoint, args.out)
    print(f"test accuracy {acc:.4f}  ({elapsed:.1f} s)  saved {args.out}")


if __name__ == "__main__":
    main()
