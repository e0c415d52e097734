"""A decoder's artifacts as the server sees them: the cache layout the manifest's ``hf`` entry records, the
tokenizer copied beside the model (``tokenizer/``) and the golden generations (``golden/generation.json``).

Tokenization uses the ``tokenizers`` package on ``tokenizer/tokenizer.json``, never transformers: the server
imports neither transformers nor torch. ``tokenizers`` is imported only when a decoder has a fast tokenizer,
so other models' servers and bundles do not need it. A folder with only a slow tokenizer (``vocab.txt``,
``tokenizer.model``) serves token ids alone, and the start-up line says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.documents.manifest import Manifest
from exporter.errors import UsageError
from exporter.hf.decoding import DecoderLayout
from exporter.hf.facts import GenerationCase
from exporter.hf.generation_check import case_from_json
from exporter.loading.safe_paths import read_inside

__all__ = ["GENERATION_FILE", "DecoderServing", "TextCodec", "decoder_files", "decoder_of", "hf_entry"]

GENERATION_FILE = "golden/generation.json"
TOKENIZER_FILE = "tokenizer/tokenizer.json"
TOKENIZER_CONFIG = "tokenizer/tokenizer_config.json"


def hf_entry(manifest: Manifest) -> dict[str, Any] | None:
    """The manifest's ``hf`` entry as JSON data (a typed entry or a plain mapping), None when absent."""
    entry = getattr(manifest, "hf", None)
    if entry is None:
        return None
    if hasattr(entry, "model_dump"):
        return dict(entry.model_dump(mode="json"))
    if isinstance(entry, dict):
        return entry
    return dict(vars(entry))


def decoder_files(manifest: Manifest) -> list[str]:
    """The files a decoder's server reads beside the model: the tokenizer's and the golden generations
    (those the manifest lists with a hash)."""
    entry = hf_entry(manifest)
    if entry is None or entry.get("decoder") is None:
        return []
    listed = [name for name in entry.get("tokenizer") or [] if isinstance(name, str)]
    return [name for name in [*listed, GENERATION_FILE] if name in manifest.files]


@dataclass(frozen=True)
class DecoderServing:
    """What generate needs, known before anything listens (plain data: a ``--workers`` worker gets it
    pickled and opens the tokenizer itself)."""

    layout: DecoderLayout
    cases: tuple[GenerationCase, ...]
    tokenizer: Path | None
    """``tokenizer.json`` in the server's private copy; None: token ids only."""
    tokenizer_note: str
    """How text is handled, for the start-up line."""
    add_bos: int | None = None
    """A BOS id to put before every encoded text (``add_bos_token`` in tokenizer_config.json, when the
    tokenizer's own post-processor does not add it): as transformers' tokenizer encodes."""
    add_eos: int | None = None

    def codec(self) -> TextCodec | None:
        return None if self.tokenizer is None else TextCodec(self)


def decoder_of(folder: Path, manifest: Manifest) -> DecoderServing | None:
    """The decoder in ``folder`` (the checked private copy), or None for any other model.

    Raises:
        UsageError: the ``hf`` entry's layout, the golden generations or the model's inputs do not fit.
    """
    entry = hf_entry(manifest)
    if entry is None or entry.get("decoder") is None:
        return None
    named_by = f"manifest.json of '{folder}'"
    try:
        layout = DecoderLayout.from_json(entry["decoder"])
    except (ValueError, TypeError) as error:
        raise UsageError(f"{named_by}: hf.decoder: {error}; re-export the folder") from None
    inputs = [tensor.name for tensor in manifest.input_spec.inputs]
    if inputs != list(layout.input_names):
        raise UsageError(
            f"{named_by}: the model's inputs {inputs[:4]}... are not a decoder's with its cache "
            f"({', '.join(layout.input_names[:4])}, ...); re-export it with --task text-generation"
        )
    cases = _cases(folder, manifest, named_by)
    listed = entry.get("tokenizer") or []
    if TOKENIZER_FILE in listed and TOKENIZER_FILE in manifest.files:
        config = _json_file(folder, TOKENIZER_CONFIG, named_by) if TOKENIZER_CONFIG in listed else {}
        bos, eos = _added_specials(folder / TOKENIZER_FILE, config)
        return DecoderServing(layout, cases, folder / TOKENIZER_FILE, "text and token ids", bos, eos)
    note = "token ids only (no tokenizer)"
    if listed:
        note = "token ids only (the tokenizer has no tokenizer.json: the server reads only fast tokenizers)"
    return DecoderServing(layout, cases, None, note)


def _cases(folder: Path, manifest: Manifest, named_by: str) -> tuple[GenerationCase, ...]:
    if GENERATION_FILE not in manifest.files:
        return ()
    document = _json_file(folder, GENERATION_FILE, named_by)
    cases = document.get("cases")
    try:
        if not isinstance(cases, list):
            raise ValueError("'cases' is not a list")
        return tuple(case_from_json(case) for case in cases)
    except (ValueError, AttributeError) as error:
        raise UsageError(f"{named_by}: {GENERATION_FILE}: {error}; re-export the folder") from None


def _json_file(folder: Path, name: str, named_by: str) -> dict[str, Any]:
    try:
        document = json.loads(read_inside(folder, name, named_by))
    except ValueError:
        raise UsageError(f"{named_by}: {name} is not JSON; re-export the folder") from None
    if not isinstance(document, dict):
        raise UsageError(f"{named_by}: {name} is not a JSON object; re-export the folder")
    return document


def _added_specials(tokenizer_json: Path, config: dict[str, Any]) -> tuple[int | None, int | None]:
    """BOS/EOS ids tokenizer_config.json asks for (``add_bos_token``/``add_eos_token``) that the
    tokenizer's post-processor does not add by itself; transformers adds them when it loads."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    probe = tokenizer.encode("a").ids
    added: list[int | None] = []
    for flag, key, at in (("add_bos_token", "bos_token", 0), ("add_eos_token", "eos_token", -1)):
        token = config.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        ident = tokenizer.token_to_id(token) if config.get(flag) is True and isinstance(token, str) else None
        added.append(ident if ident is not None and (not probe or probe[at] != ident) else None)
    return added[0], added[1]


class TextCodec:
    """Text to token ids and back, as transformers' tokenizer does for the exported model's prompts."""

    def __init__(self, serving: DecoderServing) -> None:
        from tokenizers import Tokenizer

        assert serving.tokenizer is not None
        self.tokenizer = Tokenizer.from_file(str(serving.tokenizer))
        self.bos, self.eos = serving.add_bos, serving.add_eos

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text).ids)
        if self.bos is not None:
            ids.insert(0, self.bos)
        if self.eos is not None:
            ids.append(self.eos)
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


class TextPieces:
    """The text of a growing token sequence, handed out piece by piece: the text of every token so far
    minus the text already sent. A piece that ends inside a multi-byte character (U+FFFD at its end) is
    held back until the next token completes it, so the pieces joined are the whole text."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token: int, last: bool = False) -> str:
        self.ids.append(token)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd") and not last:
            return ""
        kept = len(self.sent) if text.startswith(self.sent) else len(_common(text, self.sent))
        piece = text[kept:]
        self.sent = text
        return piece


def _common(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[size] == b[size]:
        size += 1
    return a[:size]
