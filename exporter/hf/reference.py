"""transformers' own greedy generations for the golden prompts: the reference a decoder's exported model
must reproduce token for token (``exporter.hf.generation_check``). Runs ``generate`` on the loaded
transformers model, so it imports torch; the load stage calls it once per export."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from exporter.hf.facts import GenerationCase

__all__ = ["reference_generations"]


def reference_generations(
    model: Any, prompts: Sequence[tuple[str, str | None, Sequence[int]]], n: int
) -> tuple[GenerationCase, ...]:
    """``n`` greedy tokens after each ``(name, text, token ids)`` prompt, from ``model.generate``.

    ``eos_token_id=[]`` makes ``generate`` neither stop at nor suppress an end-of-sequence token, so it
    takes the plain argmax at every one of the ``n`` steps, as ``greedy_tokens`` does (``min_new_tokens``
    would mask the end-of-sequence logit, and a trained model puts it first after most sentences). A plain
    greedy configuration replaces the folder's ``generation_config.json``, whose repetition penalty or
    banned n-grams no exported graph applies; the attention mask is all ones (no padding), as
    ``decoding.step_inputs`` feeds it.
    """
    cases = []
    pad = _pad_token(model)
    folder_config = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=pad)
    try:
        for name, text, ids in prompts:
            input_ids = torch.tensor([list(ids)], dtype=torch.long)
            with torch.inference_mode():
                generated = model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=[],
                    max_new_tokens=n,
                    pad_token_id=pad,
                )
            new = generated[0, input_ids.shape[1] :].tolist()
            cases.append(GenerationCase(name, tuple(int(i) for i in ids), tuple(int(t) for t in new), text))
    finally:
        model.generation_config = folder_config
    return tuple(cases)


def _pad_token(model: Any) -> int | None:
    """The config's pad token, else its first end-of-sequence token: ``generate`` warns without one."""
    config = getattr(model, "generation_config", None) or model.config
    pad = getattr(config, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, list):
        return int(eos[0]) if eos else None
    return None if eos is None else int(eos)
