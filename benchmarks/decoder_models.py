"""The decoders ``benchmarks/decoder.py`` measures: Llama-style configs with grouped-query attention, random
weights (no downloads), saved with ``save_pretrained`` beside a byte-level BPE tokenizer trained here.

``small`` is ``tests.hf_models.llama_folder`` grown to a few layers and a context long enough for a past of
512; ``125m`` has the shape of the small Llama-family models people deploy (768 hidden, 12 layers, 12 query
heads sharing 4 key/value heads, a 32000-token vocabulary, tied embeddings): 128 M parameters. Its weights
keep transformers' default ``initializer_range`` (0.02): the timing does not depend on them, and the
logits stay as peaked as a random model's can be. The tokenizer knows a few hundred tokens; the model's
vocabulary is the config's (the head's size is what costs time).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exporter.runners.base import Runner  # noqa: E402

__all__ = [
    "MODELS",
    "EagerWithCache",
    "build_folder",
    "generate_per_token_ms",
    "generate_tokens",
    "load_eager",
]

MODELS: dict[str, dict[str, Any]] = {
    "small": {
        "vocab_size": 4096,
        "hidden_size": 256,
        "intermediate_size": 704,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "initializer_range": 0.05,
    },
    "125m": {
        "vocab_size": 32000,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
    },
}
"""name -> LlamaConfig fields (besides tied embeddings and the special tokens of the tokenizer)."""


def build_folder(name: str, folder: Path, seed: int = 0) -> dict[str, Any]:
    """Write the ``name`` model's folder (config, safetensors, tokenizer) unless its ``bench.json`` says it
    is there already; returns that record (parameters, float32 bytes, config fields)."""
    record = folder / "bench.json"
    if record.is_file():
        return dict(json.loads(record.read_text()))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.hf_models import save_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    fields = MODELS[name]
    tokens = save_tokenizer(folder)
    config = LlamaConfig(**fields, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    data = {
        "name": name,
        "parameters": parameters,
        "weights_bytes": 4 * parameters,
        "tokenizer_tokens": tokens,
        "config": fields,
    }
    record.write_text(json.dumps(data, indent=2) + "\n")
    return data


def load_eager(folder: Path, threads: int) -> Any:
    """The folder's model in transformers, float32, eval, on ``threads`` threads (as every runner here)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(threads)
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()


class EagerWithCache(Runner):
    """Eager transformers with its own ``DynamicCache``, called as ``generate`` calls the model each step
    (``model(input_ids, attention_mask, position_ids, past_key_values=cache)``), not through our wrapper.

    Fed the same numpy inputs as the exported models: the cache is built once from a plan's past arrays and
    cropped back to that length after each call (``DynamicCache.crop``), so every timed call appends one
    token to a cache of the plan's length, as a decode step does; a prefill gets a fresh empty cache."""

    name = "eager transformers (DynamicCache)"

    def __init__(self, model: Any, num_layers: int) -> None:
        super().__init__(["input_ids", "attention_mask", "position_ids", *past_names(num_layers)])
        self.model = model
        self.num_layers = num_layers
        self._source: int | None = None
        self._cache: Any = None
        self._length = 0

    def _cache_for(self, past: list[np.ndarray]) -> Any:
        import torch
        from transformers import DynamicCache

        length = past[0].shape[2]
        if length == 0:
            return DynamicCache(config=self.model.config)
        if self._source != id(past[0]) or self._length != length:
            cache = DynamicCache(config=self.model.config)
            for layer in range(self.num_layers):
                key, value = (torch.from_numpy(past[2 * layer + k].copy()) for k in (0, 1))
                cache.update(key, value, layer)
            self._source, self._cache, self._length = id(past[0]), cache, length
        return self._cache

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        names = past_names(self.num_layers)
        cache = self._cache_for([inputs[n] for n in names])
        tensors = {n: torch.from_numpy(inputs[n]) for n in ("input_ids", "attention_mask", "position_ids")}
        with torch.inference_mode():
            logits = self.model(**tensors, past_key_values=cache, use_cache=True).logits
        if inputs[names[0]].shape[2] > 0:
            cache.crop(-inputs["input_ids"].shape[1])  # transformers 5: a negative count of tokens to drop
        return [logits.numpy()]


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def generate_tokens(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy ``generate`` (``min_new_tokens == max_new_tokens``: no stop at end of text)."""
    import torch

    ids = torch.tensor([prompt], dtype=torch.int64)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            pad_token_id=model.config.pad_token_id,
        )
    return [int(t) for t in out[0, len(prompt) :]]


def generate_per_token_ms(model: Any, prompt_length: int, new_tokens: int, repeats: int = 3) -> float:
    """What ``generate`` costs per token after the first: the median over ``repeats`` of
    (time for 1 + ``new_tokens`` tokens - time for 1 token) / ``new_tokens``, from a random prompt."""
    rng = np.random.default_rng(prompt_length)
    prompt = [int(t) for t in rng.integers(4, model.config.vocab_size, size=prompt_length)]
    generate_tokens(model, prompt, 2)
    per_token = []
    for _ in range(repeats):
        started = time.perf_counter()
        generate_tokens(model, prompt, 1)
        one = time.perf_counter() - started
        started = time.perf_counter()
        generate_tokens(model, prompt, 1 + new_tokens)
        many = time.perf_counter() - started
        per_token.append((many - one) * 1000 / new_tokens)
    return float(np.median(per_token))
