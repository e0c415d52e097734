"""Read a Hugging Face folder as data, and refuse one whose loading would run its author's code.

Loading a folder with transformers can import Python it names (``auto_map``), unpickle its ``.bin``
weights, follow its links, and build a model of whatever size its config claims. All is read here first,
as data: JSON size-capped, safetensors headers (never tensors), pickles walked opcode by opcode
(:mod:`exporter.loading.pickle_audit`). The config goes through transformers' own class for its
``model_type`` (no code from the folder), so GPT-2's ``n_embd`` is checked as ``hidden_size``.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import LoadError
from exporter.hf.folder_files import (
    DOCUMENT_LIMIT,
    TRUST_FIX,
    excerpt,
    find_weights,
    read_object,
    regular_file,
)

__all__ = ["HfFolder", "is_hf_folder", "read_folder"]

CONFIG_LIMIT = 1024 * 1024
"""Bytes config.json may hold (a real one is a few KiB)."""
_TOKENIZER_NAMES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja",
)  # fmt: skip
_VOCABULARIES = frozenset(_TOKENIZER_NAMES[4:10]) | {"tokenizer.json"}
# (attribute, required, cap): read through the config object, so a model's own spelling maps to these.
_FIELDS = (
    ("vocab_size", True, 1 << 22),
    ("hidden_size", True, 1 << 16),
    ("num_hidden_layers", True, 1000),
    ("num_attention_heads", True, 1 << 16),
    ("num_key_value_heads", False, 1 << 16),
    ("max_position_embeddings", False, 1 << 24),
    ("intermediate_size", False, 1 << 20),
    ("head_dim", False, 1 << 16),
)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|block|blocks)\.(\d+)\.")
_NOT_THEIRS = "the config does not belong to these weights; fix it or re-save the folder with save_pretrained"
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


@dataclass(frozen=True)
class HfFolder:
    """A folder's checked contents: weight files to load and tokenizer files, all regular files inside it;
    ``parameters`` is the element count the safetensors headers declare (None for pickled weights)."""

    path: Path
    config: dict[str, Any]
    model_type: str
    architectures: tuple[str, ...]
    weights: tuple[Path, ...]
    weights_format: str
    tokenizer_files: tuple[Path, ...]
    parameters: int | None = None

    @property
    def has_tokenizer(self) -> bool:
        """A fast tokenizer or a slow vocabulary: the folder can turn text into token ids."""
        return any(path.name in _VOCABULARIES for path in self.tokenizer_files)


def is_hf_folder(path: Path) -> bool:
    """A directory holding config.json (a link there counts, so that read_folder refuses it by name)."""
    return path.is_dir() and os.path.lexists(path / "config.json")


def read_folder(path: Path, trust_checkpoint: bool) -> HfFolder:
    """Check the folder as data and return what it holds.

    Raises:
        LoadError: one line naming the file or field and the fix (custom code and unsafe pickles are
            accepted with ``trust_checkpoint``; links, files outside the folder and absurd sizes never).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise LoadError(f"'{folder}' is not a folder; a Hugging Face checkpoint is a folder with config.json")
    config = read_object(folder, "config.json", CONFIG_LIMIT)
    model_type = _check_custom_code(folder, config, "config.json", trust_checkpoint)
    tokenizer_files = tuple(p for name in _TOKENIZER_NAMES if (p := regular_file(folder, name)) is not None)
    if folder / "tokenizer_config.json" in tokenizer_files:
        tokenizer_config = read_object(folder, "tokenizer_config.json", DOCUMENT_LIMIT)
        _check_custom_code(folder, tokenizer_config, "tokenizer_config.json", trust_checkpoint)
    sizes = _check_sizes(config, _transformers_config(model_type, config), strict=not trust_checkpoint)
    weights, weights_format, tensors = find_weights(folder, trust_checkpoint)
    if tensors:
        _check_against_weights(config, sizes, tensors)
    architectures = config.get("architectures") or ()
    return HfFolder(
        path=folder,
        config=config,
        model_type=model_type,
        architectures=tuple(str(name) for name in architectures) if isinstance(architectures, list) else (),
        weights=weights,
        weights_format=weights_format,
        tokenizer_files=tokenizer_files,
        parameters=sum(math.prod(shape) for shape in tensors.values()) if tensors else None,
    )


def _check_custom_code(folder: Path, document: dict[str, Any], name: str, trust: bool) -> str:
    """The ``model_type`` of config.json (or "" for another document), refusing code the folder names."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    named = document.get("auto_map")
    if named is not None and not trust:
        raise LoadError(
            f"{name} in '{folder}' names custom code (auto_map: {excerpt(json.dumps(named))}): "
            f"exporter runs no code from a checkpoint; {TRUST_FIX}"
        )
    if name != "config.json":
        return ""
    model_type = document.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise LoadError(
            f"config.json in '{folder}' has no model_type, so transformers cannot tell which model it is; "
            "save the folder with save_pretrained, which writes it"
        )
    if model_type not in CONFIG_MAPPING_NAMES and not trust:
        raise LoadError(
            f"config.json in '{folder}' names model_type {excerpt(model_type)}, which this transformers "
            f"does not know (custom code would define it): exporter runs no code from a checkpoint; "
            f"{TRUST_FIX}"
        )
    return model_type


def _transformers_config(model_type: str, config: dict[str, Any]) -> Any:
    """transformers' config object for the folder's fields (its validators run; nothing from the folder
    does), or None for a trusted model_type transformers does not know."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        return None
    fields = {key: value for key, value in config.items() if key != "model_type"}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as error:
        text = excerpt(" ".join(line.strip() for line in str(error).splitlines() if line.strip()), 240)
        raise LoadError(f"config.json does not fit a {model_type} config: {text[1:-1]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def _check_sizes(raw: dict[str, Any], parsed: Any, strict: bool) -> dict[str, int]:
    """The standard sizes, each a positive int under its cap; the required ones present in config.json
    itself (transformers would fill in its own defaults, which are not this model's)."""
    aliases: dict[str, str] = getattr(parsed, "attribute_map", {}) or {}
    sizes: dict[str, int] = {}
    for name, required, cap in _FIELDS:
        spelled = name if name in raw or name not in aliases else aliases[name]
        given = spelled in raw
        if parsed is None and not given:
            continue
        if required and strict and not given:
            shown = name if spelled == name else f"{name} (or {spelled})"
            raise LoadError(
                f"config.json has no {shown}: the model's size must come from its own config; "
                "save the folder with save_pretrained from the model it belongs to"
            )
        value = getattr(parsed, name, None) if parsed is not None else raw.get(spelled)
        if value is None and not (required and strict):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= cap:
            raise LoadError(
                f"config.json's {spelled} is {excerpt(repr(value))[1:-1]}, not a whole number from 1 to "
                f"{cap}: fix the config (a checkpoint this size cannot be real)"
            )
        sizes[name] = value
    hidden, heads = sizes.get("hidden_size"), sizes.get("num_attention_heads")
    if hidden and heads:
        if heads > hidden or ("head_dim" not in raw and hidden % heads):
            raise LoadError(
                f"config.json's num_attention_heads ({heads}) does not divide hidden_size ({hidden}) into "
                "whole heads: fix the config"
            )
        kv_heads = sizes.get("num_key_value_heads")
        if kv_heads and heads % kv_heads:
            raise LoadError(
                f"config.json's num_key_value_heads ({kv_heads}) does not divide num_attention_heads "
                f"({heads}): fix the config"
            )
    return sizes


def _check_against_weights(raw: dict[str, Any], sizes: dict[str, int], tensors: dict[str, Any]) -> None:
    """The config's layer count and vocabulary match the weights: a mismatch would load silently, with
    missing layers left at random values or weights ignored."""
    layers = {int(match.group(1)) for name in tensors if (match := _LAYER_INDEX.search(name))}
    expected = sizes.get("num_hidden_layers")
    if layers and expected and not raw.get("is_encoder_decoder") and max(layers) + 1 != expected:
        raise LoadError(
            f"config.json's num_hidden_layers is {expected} but the weights hold {max(layers) + 1} layers: "
            f"{_NOT_THEIRS}"
        )
    vocab = sizes.get("vocab_size")
    for name, shape in tensors.items():
        if vocab and name.endswith(_EMBEDDINGS) and len(shape) == 2 and shape[0] != vocab:
            raise LoadError(
                f"config.json's vocab_size is {vocab} but the weights' {name} has {shape[0]} rows: "
                f"{_NOT_THEIRS}"
            )
