"""The verify stage's decoder check: every shipped float artifact generates greedy tokens from the golden
prompts through its own cache, and must reproduce transformers' ``generate`` token for token
(``hf.generation_check``). Logits within tolerance at a few shapes do not prove that: a decoder is judged
by what it generates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from exporter.backends.registry import BackendResult, OpenContext, open_shipped
from exporter.hf.facts import HfFacts
from exporter.hf.generation_check import GENERATING_RUNTIMES, GenerationResult, check_generation

if TYPE_CHECKING:
    from exporter.options import ExportOptions

__all__ = ["check_generations"]


def check_generations(
    results: Sequence[BackendResult], facts: HfFacts, options: ExportOptions, step: Callable[[str], None]
) -> tuple[list[GenerationResult], list[str]]:
    """The generation check of each backend's shipped float artifact; notes for those not checked."""
    assert facts.layout is not None
    checked: list[GenerationResult] = []
    notes: list[str] = []
    if not facts.generation:
        return [], ["no golden prompts: the decoder's greedy generation was not checked"]
    context = OpenContext(options.spec, options.threads)
    for result in results:
        runtime = result.spec.runtime if result.spec is not None else None
        if runtime not in GENERATING_RUNTIMES:
            notes.append(
                f"{result.backend}: greedy generation not checked (only ONNX Runtime and OpenVINO files are "
                "replayed); its logits were verified at every shape"
            )
            continue
        step(f"generating {facts.max_new_tokens} tokens x {len(facts.generation)} prompts: {result.backend}")
        try:
            runner = open_shipped(result, context)
        except Exception as error:
            checked.append(GenerationResult(result.backend, "transformers generate", 0, (), error=str(error)))
            continue
        with runner:
            checked.append(check_generation(runner, facts.layout, facts.generation, artifact=result.backend))
    return checked, notes
