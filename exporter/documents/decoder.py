"""A decoder's part of the documents: the Hugging Face facts, each artifact's greedy generation against
transformers, and the time to first token and per token, for report.json and manifest.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from exporter.benchmark.decoder import DecoderLatency
from exporter.hf.facts import HfFacts
from exporter.hf.generation_check import GenerationResult

if TYPE_CHECKING:
    from exporter.documents.manifest import GenerationEntry, HfEntry

__all__ = ["GENERATION_FILE", "decoder_manifest", "decoder_report"]

GENERATION_FILE = "golden/generation.json"
"""The golden prompts and transformers' tokens, ``{"max_new_tokens": N, "cases": [...]}``."""


def decoder_report(
    loaded: Any, generation: Sequence[GenerationResult], latency: Sequence[DecoderLatency]
) -> dict[str, Any]:
    """report.json's ``hf``, ``generation`` (one entry per checked artifact) and ``decoder_latency``."""
    facts: HfFacts | None = loaded.hf
    return {
        "hf": facts.to_json() if facts is not None else None,
        "generation": [g.to_json() for g in generation] or None,
        "decoder_latency": [row.to_json() for row in latency] or None,
    }


def decoder_manifest(
    loaded: Any, generation: Sequence[GenerationResult], latency: Sequence[DecoderLatency]
) -> tuple[HfEntry | None, GenerationEntry | None, list[DecoderLatency] | None]:
    """The manifest's ``hf``, ``generation`` and ``decoder_latency`` entries (None where not a decoder)."""
    from exporter.documents.manifest import GenerationEntry, GenerationResultEntry, HfEntry

    facts: HfFacts | None = loaded.hf
    if facts is None:
        return None, None, None
    hf = HfEntry.model_validate(facts.to_json(), strict=False)
    entry = None
    if facts.is_decoder and facts.generation:
        results = [
            GenerationResultEntry(
                artifact=g.artifact,
                reference=g.reference,
                passed=g.passed,
                identical_prompts=g.identical,
                prompts_total=len(g.prompts),
                match_share=round(g.mean_share, 4),
                floor=g.floor,
                first_failure=next(iter(g.failures()), None),
            )
            for g in generation
        ]
        entry = GenerationEntry(
            file=GENERATION_FILE,
            max_new_tokens=facts.max_new_tokens,
            prompts=len(facts.generation),
            results=results,
        )
    return hf, entry, list(latency) or None
