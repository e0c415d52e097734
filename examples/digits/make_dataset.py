"""Convert scikit-learn's copy of the UCI digits CSV into ``digits.npz``.

Usage (from the repository root)::

    python examples/digits/make_dataset.py path/to/digits.csv.gz

See ``DATA.md`` next to this file for where the CSV comes from.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

NUM_PIXELS = 64
MAX_PIXEL = 16.0
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def convert(csv_gz: Path, out: Path) -> dict[str, np.ndarray]:
    """Read the gzipped digits CSV and write the compressed ``.npz`` file.

    Args:
        csv_gz: Path to ``digits.csv.gz`` (64 pixel columns in 0..16, then the label).
        out: Destination ``.npz`` path.

    Returns:
        The arrays that were saved, keyed by name.
    """
    with gzip.open(csv_gz, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.int64)  # (N, 65)
    if raw.ndim != 2 or raw.shape[1] != NUM_PIXELS + 1:
        raise ValueError(f"unexpected CSV shape {raw.shape}")
    pixels, labels = raw[:, :NUM_PIXELS], raw[:, NUM_PIXELS]
    images = (pixels.astype(np.float32) / MAX_PIXEL).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)

    n = len(labels)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = int(n * TEST_FRACTION)
    arrays = {
        "images": images,
        "labels": labels.astype(np.int64),
        "train_idx": np.sort(perm[n_test:]).astype(np.int64),
        "test_idx": np.sort(perm[:n_test]).astype(np.int64),
    }
    np.savez_compressed(out, **arrays)
    return arrays


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv_gz", type=Path, help="path to sklearn/datasets/data/digits.csv.gz")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("digits.npz"))
    args = parser.parse_args()
    arrays = convert(args.csv_gz, args.out)
    print(
        f"wrote {args.out}: {len(arrays['labels'])} images, "
        f"{len(arrays['train_idx'])} train / {len(arrays['test_idx'])} test"
    )


if __name__ == "__main__":
    main()
