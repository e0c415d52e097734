"""Build every zoo model and save its weights as ``recipes/checkpoints/<name>.pt``.

Run ``python -m exporter.zoo.build_checkpoints [OUT_DIR]``. The factories are seeded, so the files are the
same on every run; each is a plain ``state_dict`` (loads with ``weights_only=True``) of well under 1 MB.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from exporter.zoo import ZOO

__all__ = ["DEFAULT_OUT", "build", "build_all", "main"]

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "recipes" / "checkpoints"


def build(name: str) -> nn.Module:
    """The zoo model ``name`` from its factory (seeded, in eval mode)."""
    module_name, _, attr = ZOO[name].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{ZOO[name]} returned {type(model).__name__}, not an nn.Module")
    return model


def build_all(out_dir: Path) -> list[Path]:
    """Save every zoo model's ``state_dict`` under ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ZOO:
        path = out_dir / f"{name}.pt"
        torch.save(build(name).state_dict(), path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT, help="where to write")
    args = parser.parse_args(argv)
    for path in build_all(args.out_dir):
        print(f"{path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
