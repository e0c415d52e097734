"""What an export knows of a Hugging Face folder once it is loaded: the task, the decoder's cache layout,
the tokenizer's files and the greedy generations transformers produced for the golden prompts. Plain data,
torch-free, handed from the load stage to verification, the report, the manifest and the faces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.hf.decoding import DecoderLayout

__all__ = ["DEFAULT_NEW_TOKENS", "GenerationCase", "HfFacts"]

DEFAULT_NEW_TOKENS = 32
"""Greedy tokens generated from each golden prompt (``--generate-tokens``)."""


@dataclass(frozen=True)
class GenerationCase:
    """One golden prompt and the greedy tokens transformers' ``generate`` produced after it."""

    name: str
    prompt: tuple[int, ...]
    expected: tuple[int, ...]
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "text": self.text,
            "prompt": list(self.prompt),
            "expected": list(self.expected),
        }


@dataclass(frozen=True)
class HfFacts:
    """A loaded folder's facts. ``layout`` is set for a decoder exported with its cache (``text-generation``);
    ``tokenizer_files`` are the folder's tokenizer files (copied into the artifacts' ``tokenizer/``)."""

    task: str
    model_type: str
    architectures: tuple[str, ...]
    layout: DecoderLayout | None = None
    tokenizer_files: tuple[Path, ...] = ()
    generation: tuple[GenerationCase, ...] = field(default=())
    max_new_tokens: int = DEFAULT_NEW_TOKENS

    @property
    def is_decoder(self) -> bool:
        return self.layout is not None

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``hf`` entry (the generations themselves go to ``golden/generation.json``)."""
        return {
            "task": self.task,
            "model_type": self.model_type,
            "architectures": list(self.architectures),
            "decoder": None if self.layout is None else self.layout.to_json(),
            "tokenizer": [f"tokenizer/{p.name}" for p in self.tokenizer_files],
            "max_new_tokens": self.max_new_tokens,
        }
