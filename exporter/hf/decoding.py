"""Greedy decoding through an exported decoder and its key/value cache, numpy only.

The verify stage, ``exporter verify``, the server and the benchmarks all generate tokens the same way: one
call with the whole prompt and an empty past (prefill), then one call per new token with the past the last
call returned (decode). The exported model's names are the ecosystem's (Optimum, transformers.js, ONNX
Runtime GenAI): ``input_ids``, ``attention_mask`` (past + seq), ``position_ids``,
``past_key_values.N.key/value`` in; ``logits``, ``present.N.key/value`` out. This module imports neither torch
nor transformers, so the gate and the server can use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.runners.base import Runner

__all__ = ["DecodeStep", "DecoderLayout", "decode_steps", "empty_past", "greedy_tokens", "step_inputs"]


@dataclass(frozen=True)
class DecoderLayout:
    """The shape of an exported decoder's cache: enough to feed it without its config or its weights."""

    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    eos_token_ids: tuple[int, ...] = ()
    cache_dtype: str = "float32"

    @property
    def past_names(self) -> tuple[str, ...]:
        return tuple(
            f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")
        )

    @property
    def present_names(self) -> tuple[str, ...]:
        return tuple(f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value"))

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", "position_ids", *self.past_names)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("logits", *self.present_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_positions": self.max_positions,
            "eos_token_ids": list(self.eos_token_ids),
            "cache_dtype": self.cache_dtype,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecoderLayout:
        """Read back ``to_json``; a field of the wrong type raises ``ValueError`` (the manifest is data)."""
        ints = ("num_layers", "kv_heads", "head_dim", "vocab_size", "max_positions")
        values = {key: data.get(key) for key in ints}
        bad = [key for key, value in values.items() if not isinstance(value, int) or isinstance(value, bool)]
        eos = data.get("eos_token_ids", [])
        if bad or not isinstance(eos, list) or not all(isinstance(e, int) for e in eos):
            raise ValueError(f"decoder layout: bad or missing {', '.join(bad) or 'eos_token_ids'}")
        dtype = data.get("cache_dtype", "float32")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"decoder layout: cache_dtype {dtype!r} is not float32 or float16")
        return cls(**values, eos_token_ids=tuple(eos), cache_dtype=dtype)  # type: ignore[arg-type]


def empty_past(layout: DecoderLayout, batch: int = 1) -> list[np.ndarray]:
    """The cache of the first call: every ``past_key_values.N.*`` with a past of length 0."""
    shape = (batch, layout.kv_heads, 0, layout.head_dim)
    return [np.zeros(shape, dtype=layout.cache_dtype) for _ in layout.past_names]


def step_inputs(
    layout: DecoderLayout, new_ids: np.ndarray, past: Sequence[np.ndarray], past_length: int
) -> dict[str, np.ndarray]:
    """One call's inputs: ``new_ids`` [batch, seq] after ``past_length`` cached positions (no padding)."""
    batch, seq = new_ids.shape
    feed = {
        "input_ids": new_ids.astype(np.int64, copy=False),
        "attention_mask": np.ones((batch, past_length + seq), dtype=np.int64),
        "position_ids": np.broadcast_to(
            np.arange(past_length, past_length + seq, dtype=np.int64), (batch, seq)
        ).copy(),
    }
    feed.update(zip(layout.past_names, past, strict=True))
    return feed


@dataclass(frozen=True)
class DecodeStep:
    """One generated token: its id, the call's seconds, and the last position's logits (float32)."""

    token: int
    seconds: float
    logits: np.ndarray
    prefill: bool


def decode_steps(
    runner: Runner,
    layout: DecoderLayout,
    prompt: Sequence[int],
    max_new_tokens: int,
    stop_at_eos: bool = False,
) -> Iterator[DecodeStep]:
    """Greedy decoding, a step at a time: the first step is the prefill (time to first token), each next
    one a decode call with the cache. Stops after ``max_new_tokens``, at the context's end, or (when asked)
    at an end-of-sequence token, which is yielded first."""
    if not prompt:
        raise ValueError("the prompt is empty: greedy decoding needs at least one token")
    ids = np.asarray([list(prompt)], dtype=np.int64)
    past = empty_past(layout)
    past_length = 0
    for index in range(max_new_tokens):
        if past_length + ids.shape[1] > layout.max_positions:
            return
        started = time.perf_counter()
        outputs = runner.run(step_inputs(layout, ids, past, past_length))
        seconds = time.perf_counter() - started
        last = np.asarray(outputs[0][0, -1], dtype=np.float32)
        token = int(last.argmax())
        yield DecodeStep(token, seconds, last, prefill=index == 0)
        if stop_at_eos and token in layout.eos_token_ids:
            return
        past_length += ids.shape[1]
        past = outputs[1:]
        ids = np.asarray([[token]], dtype=np.int64)


def greedy_tokens(
    runner: Runner, layout: DecoderLayout, prompt: Sequence[int], max_new_tokens: int
) -> list[int]:
    """The ``max_new_tokens`` greedy tokens after ``prompt`` (no stop at end-of-sequence, as ``generate``
    with ``min_new_tokens`` equal to ``max_new_tokens`` produces them)."""
    return [step.token for step in decode_steps(runner, layout, prompt, max_new_tokens)]
