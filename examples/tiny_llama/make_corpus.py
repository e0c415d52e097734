"""Build the tiny Llama's corpus: the docstrings of the Python 3.11 standard library (PSF licence).

Real English prose written by people, found offline on every machine that has Python, so the example needs
no download. The split is by top-level module or package, so the held-out text (and ``prompts.txt``) comes
from modules the model never saw in training. Deterministic: the same standard library gives the same files.

Run from anywhere, e.g. the repository root::

    python examples/tiny_llama/make_corpus.py            # options: --stdlib, --out

Writes ``corpus/train.txt`` and ``corpus/heldout.txt`` next to this file (one docstring per block, blocks
separated by a blank line, not committed: 1.7 MB) and ``prompts.txt`` (committed).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "turtledemo", "__pycache__", "lib2to3"}
HELD_OUT_SHARE = 10  # one top-level module in ten (by the SHA-256 of its name) is held out
PROMPTS = 16
PROMPT_WORDS = (8, 24)
MIN_CHARS = 40


def held_out(top_level: str) -> bool:
    """Whether a top-level module is held out: a hash, so the split needs no list and never drifts."""
    return int(hashlib.sha256(top_level.encode()).hexdigest(), 16) % HELD_OUT_SHARE == 0


def module_files(stdlib: Path) -> list[tuple[str, Path]]:
    """``(top-level module, file)`` for every ``.py`` file of the standard library, sorted, tests skipped."""
    found: list[tuple[str, Path]] = []
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if any(p in SKIPPED_DIRS or p.startswith(("config-", "lib-dynload")) for p in parts[:-1]):
            continue
        found.append((parts[0].removesuffix(".py"), path))
    return found


def docstrings(path: Path) -> list[str]:
    """The module, class and function docstrings of one file, cleaned (``inspect.cleandoc``)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, kinds))]
    texts = [ast.get_docstring(n, clean=True) for n in nodes]
    return [t.strip() for t in texts if t and len(t.strip()) >= MIN_CHARS]


def build(stdlib: Path) -> tuple[list[str], list[str], list[str]]:
    """``(train, heldout, held-out top-level modules)``: deduplicated docstrings, first occurrence kept."""
    seen: set[str] = set()
    train: list[str] = []
    heldout: list[str] = []
    modules: set[str] = set()
    for top, path in module_files(stdlib):
        for text in docstrings(path):
            key = re.sub(r"\s+", " ", text)
            if key in seen:
                continue
            seen.add(key)
            if held_out(top):
                heldout.append(text)
                modules.add(top)
            else:
                train.append(text)
    return train, heldout, sorted(modules)


def prompts(heldout: list[str]) -> list[str]:
    """Prompts from the held-out text: first lines of prose (8-24 words, letters first), cut before their
    last three words and at 12 words at most, so each is unfinished; spread evenly over the held-out text."""
    lines: list[str] = []
    for text in heldout:
        first = text.splitlines()[0].strip()
        words = first.split()
        if PROMPT_WORDS[0] <= len(words) <= PROMPT_WORDS[1] and first[0].isalpha() and ">>>" not in first:
            lines.append(" ".join(words[: min(12, len(words) - 3)]))
    step = max(1, len(lines) // PROMPTS)
    return lines[::step][:PROMPTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--out", type=Path, default=HERE / "corpus")
    args = parser.parse_args()
    train, heldout, modules = build(args.stdlib)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.txt").write_text("\n\n".join(train) + "\n", encoding="utf-8")
    (args.out / "heldout.txt").write_text("\n\n".join(heldout) + "\n", encoding="utf-8")
    (HERE / "prompts.txt").write_text("\n".join(prompts(heldout)) + "\n", encoding="utf-8")
    size = sum(len(t) for t in train)
    print(f"train: {len(train)} docstrings, {size} chars; held out: {len(heldout)} docstrings from {modules}")


if __name__ == "__main__":
    main()
