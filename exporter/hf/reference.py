"""transformers' own greedy generations for the golden prompts: the reference a decoder's exported model
must reproduce token for token (``exporter.hf.generation_check``). Runs ``generate`` on the loaded
transformers model, so it imports torch; the load stage calls it once per export."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exporter.hf.facts import GenerationCase

__all__ = ["reference_generations"]


def reference_generations(
    model: Any, prompts: Sequence[tuple[str, str | None, Sequence[int]]], n: int
) -> tuple[GenerationCase, ...]:
    """``n`` greedy tokens after each ``(name, text, token ids)`` prompt, from ``model.generate``.

    ``min_new_tokens`` equal to ``max_new_tokens`` keeps generating past an end-of-sequence token, so the
    exported model is compared over all ``n`` steps (``greedy_tokens`` does not stop either); the attention
    mask is all ones (no padding), as ``decoding.step_inputs`` feeds it.
    """
    cases = []
    for name, text, ids in prompts:
        input_ids = torch.tensor([list(ids)], dtype=torch.long)
        with torch.inference_mode():
            generated = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                min_new_tokens=n,
                max_new_tokens=n,
                pad_token_id=_pad_token(model),
            )
        new = generated[0, input_ids.shape[1] :].tolist()
        cases.append(GenerationCase(name, tuple(int(i) for i in ids), tuple(int(t) for t in new), text))
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
