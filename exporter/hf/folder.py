"""Read a Hugging Face folder as data, and refuse one whose loading would run its author's code.

Loading a folder with transformers can import Python it names (``auto_map``), unpickle its ``.bin``
weights, follow its links, and build a model of whatever size its config claims. All is read here first,
as data: JSON size-capped, safetensors headers (never tensors), pickles walked opcode by opcode
(:mod:`exporter.loading.pickle_audit`). The config goes through transformers' own class for its
``model_type`` (no code from the folder), so GPT-2's ``n_embd`` is checked as ``hidden_size``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard

from exporter.errors import LoadError
from exporter.loading.checkpoint_audit import UnsafeCheckpointError, audit_torch_save

__all__ = ["HfFolder", "is_hf_folder", "read_folder"]

CONFIG_LIMIT = 1024 * 1024
"""Bytes config.json may hold (a real one is a few KiB)."""
DOCUMENT_LIMIT = 64 * 1024 * 1024
"""Bytes a shard index or tokenizer_config.json may hold."""
HEADER_LIMIT = 100 * 1024 * 1024
"""Bytes a safetensors header may claim (the safetensors library's own cap)."""

TRUST_FIX = "pass --trust-checkpoint if you trust this folder's author"
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
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
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
    config = _read_object(folder, "config.json", CONFIG_LIMIT)
    model_type = _check_custom_code(folder, config, "config.json", trust_checkpoint)
    tokenizer_files = tuple(p for name in _TOKENIZER_NAMES if (p := _regular(folder, name)) is not None)
    if folder / "tokenizer_config.json" in tokenizer_files:
        tokenizer_config = _read_object(folder, "tokenizer_config.json", DOCUMENT_LIMIT)
        _check_custom_code(folder, tokenizer_config, "tokenizer_config.json", trust_checkpoint)
    sizes = _check_sizes(config, _transformers_config(model_type, config), strict=not trust_checkpoint)
    weights, weights_format, tensors = _find_weights(folder, trust_checkpoint)
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
            f"{name} in '{folder}' names custom code (auto_map: {_excerpt(json.dumps(named))}): "
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
            f"config.json in '{folder}' names model_type {_excerpt(model_type)}, which this transformers "
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
        text = _excerpt(" ".join(line.strip() for line in str(error).splitlines() if line.strip()), 240)
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
                f"config.json's {spelled} is {_excerpt(repr(value))[1:-1]}, not a whole number from 1 to "
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


def _find_weights(folder: Path, trust: bool) -> tuple[tuple[Path, ...], str, dict[str, tuple[int, ...]]]:
    """The weight files transformers would load, in its order of preference, with the tensors the
    safetensors headers declare (name -> shape)."""
    for single, index, weights_format in (
        ("model.safetensors", "model.safetensors.index.json", "safetensors"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", "pickle"),
    ):
        if (path := _regular(folder, single)) is not None:
            files: tuple[Path, ...] = (path,)
        elif _regular(folder, index) is not None:
            files = _shards(folder, index, ".safetensors" if weights_format == "safetensors" else "")
        else:
            continue
        tensors: dict[str, tuple[int, ...]] = {}
        for file in files:
            if weights_format == "safetensors":
                tensors.update(_safetensors_header(folder, file))
            elif not trust:
                _audit_pickle(folder, file)
        return files, weights_format, tensors
    raise LoadError(
        f"no model.safetensors or pytorch_model.bin in '{folder}' (nor a sharded index of them): "
        "save the model into it with save_pretrained"
    )


def _shards(folder: Path, index: str, suffix: str) -> tuple[Path, ...]:
    """The files a shard index's weight_map names: plain names of regular files in the folder."""
    document = _read_object(folder, index, DOCUMENT_LIMIT)
    weight_map = document.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise LoadError(f"{index} in '{folder}' has no weight_map: re-save the folder with save_pretrained")
    names: list[str] = []
    for value in weight_map.values():
        if value in names:
            continue
        plain = isinstance(value, str) and value not in ("", ".", "..") and not re.search(r"[/\\\0]", value)
        if not plain or not value.endswith(suffix):
            raise LoadError(
                f"{index} in '{folder}' names shard {_excerpt(str(value))}, which is not a "
                f"{suffix or 'weight'} file name inside the folder; refusing to read it "
                "(a shard index may only name files next to it)"
            )
        if _regular(folder, value) is None:
            raise LoadError(f"{index} in '{folder}' names shard '{value}', which is missing")
        names.append(value)
    return tuple(folder / name for name in names)


def _safetensors_header(folder: Path, path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, after checking its byte range lies inside the file and fits its dtype."""

    def refuse(problem: str) -> LoadError:
        fix = "it is not a whole safetensors file (truncated or tampered); re-save it with save_pretrained"
        return LoadError(f"{path.name} in '{folder}' {problem}: {fix}")

    with _open_regular(folder, path.name) as (handle, size):
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise refuse("is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > HEADER_LIMIT or 8 + length > size:
            raise refuse(f"claims a {length}-byte header in a {size}-byte file")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise refuse("has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise refuse("has a header that is not a JSON object")
    data_bytes = size - 8 - length
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        fields = entry if isinstance(entry, dict) else {}
        shape, offsets = fields.get("shape"), fields.get("data_offsets")
        if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
            raise refuse(f"describes tensor {_excerpt(name)} without a shape and data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            raise refuse(
                f"places tensor {_excerpt(name)} at bytes {begin}..{end}, past its {data_bytes} data bytes"
            )
        bits = _DTYPE_BITS.get(str(fields.get("dtype")))
        if bits is not None and math.prod(shape) * bits != (end - begin) * 8:
            raise refuse(f"gives tensor {_excerpt(name)} {end - begin} bytes for shape {shape}")
        shapes[name] = tuple(shape)
    return shapes


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


def _audit_pickle(folder: Path, path: Path) -> None:
    """Refuse a pickled weight file that imports anything ``torch.load(weights_only=True)`` refuses."""
    try:
        audit_torch_save(path)
    except UnsafeCheckpointError as finding:
        raise LoadError(
            f"{path.name} in '{folder}' {finding.what}, and {finding.risk}: refused; convert the folder to "
            f"safetensors (save_pretrained writes them) or {TRUST_FIX}"
        ) from None
    except Exception as error:
        raise LoadError(
            f"cannot read {path.name} in '{folder}' as a PyTorch checkpoint (truncated or corrupt?): "
            f"{_excerpt(str(error))[1:-1]}"
        ) from None


def _regular(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a regular file (not a link), None if absent; anything else is refused."""
    path = folder / name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LoadError(f"cannot inspect {name} in '{folder}': {error.strerror}") from None
    if stat.S_ISLNK(mode):
        raise LoadError(
            f"{name} in '{folder}' is a symlink; refusing to follow it (every file of a checkpoint folder "
            "must be a regular file inside it): copy the file in instead"
        )
    if not stat.S_ISREG(mode):
        raise LoadError(f"{name} in '{folder}' is not a regular file; refusing to read it")
    return path


@contextlib.contextmanager
def _open_regular(folder: Path, name: str) -> Iterator[tuple[IO[bytes], int]]:
    """An open handle on the regular file ``folder/name`` and its size, opened without following a link
    or blocking on a FIFO, and checked on the descriptor (what is read is what was checked)."""
    if _regular(folder, name) is None:
        raise LoadError(f"no {name} in '{folder}': a Hugging Face folder holds config.json and its weights")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(folder / name, flags)
    except OSError as error:
        raise LoadError(f"cannot open {name} in '{folder}': {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise LoadError(f"{name} in '{folder}' is not a regular file; refusing to read it")
        yield handle, info.st_size


def _read_object(folder: Path, name: str, limit: int) -> dict[str, Any]:
    """A JSON object document of at most ``limit`` bytes."""
    with _open_regular(folder, name) as (handle, size):
        if size > limit:
            raise LoadError(
                f"{name} in '{folder}' holds {size} bytes, over the {limit} allowed; refusing to parse it"
            )
        data = handle.read(limit)  # a file grown since fstat is cut, and fails to parse
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        reason = str(error).splitlines()[0] if isinstance(error, ValueError) else "nested too deep"
        raise LoadError(f"{name} in '{folder}' is not JSON ({reason}): fix or re-save the folder") from None
    if not isinstance(document, dict):
        raise LoadError(f"{name} in '{folder}' is not a JSON object: fix or re-save the folder")
    return document


def _int_list(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(type(item) is int and item >= 0 for item in value)


def _excerpt(text: str, limit: int = 80) -> str:  # repr escapes newlines: the message stays one line
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."
