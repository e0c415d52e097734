"""Judging a decoder's lossy candidate by what its users see: the tokens it generates.

Cosine on synthetic inputs is the wrong test for a decoder: an int8 model of a 4-layer Llama passed a 0.9998
budget and generated the float model's tokens on 1 prompt of 5 (issue 27). So a decoder candidate is also
judged by greedy generation from the golden prompts through its own cache, against the float model's greedy
tokens: the share of tokens that match before the first divergence, averaged over the prompts, must reach a
floor (``QuantizeOptions.token_match_floor``). The logits are compared too, on real token sequences: the
float model's generation fed back in one call (teacher forcing), so every position is judged on the tokens
the float model would see, not on a sequence the candidate already derailed. These two gate a decoder
candidate (``Candidate.budget_passed``); its outputs on synthetic samples, whose random past tensors no real
cache holds, are recorded beside them but do not gate.

Speed is per token: one decode step (a single new token after a past of ``DECODE_PAST`` positions), timed
beside the float model in the same runtime like any batch plan (``selection.time_candidates``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.benchmark.latency import BatchPlan
from exporter.hf.decoding import DecoderLayout, empty_past, greedy_tokens, step_inputs
from exporter.hf.facts import GenerationCase
from exporter.hf.generation_check import match_share
from exporter.runners.base import Runner
from exporter.verify.comparison import cosine_rows

__all__ = [
    "DECODE_PAST",
    "DecoderJudging",
    "GenerationJudgement",
    "decode_plan",
    "judge_generation",
    "prepare_decoder",
]

DECODE_PAST = 64
"""The past length at which a decode step is timed: long enough that attention over the cache costs
something, short enough for the smallest test decoder (256 positions)."""


@dataclass(frozen=True)
class DecoderJudging:
    """What every decoder candidate is judged against, computed once from the float ONNX model."""

    layout: DecoderLayout
    cases: tuple[GenerationCase, ...]
    expected: tuple[tuple[int, ...], ...]
    """The float model's greedy tokens per case: transformers' (``case.expected``), else the float ONNX's."""
    logits: tuple[np.ndarray, ...]
    """The float ONNX model's logits [positions, vocab] at the generated positions, teacher-forced."""
    floor: float

    def describe(self, timed_at: str) -> str:
        """The report's note on how the decoder's candidates were judged and timed."""
        tokens = max(len(e) for e in self.expected)
        return (
            f"decoder candidates were judged by greedy generation of {tokens} tokens from {len(self.cases)} "
            f"golden prompts against the float model (token match before divergence >= {self.floor:g}, "
            f"and the logits on those sequences), and timed per token at {timed_at}; their outputs on "
            "synthetic samples are recorded, not gated"
        )


@dataclass
class GenerationJudgement:
    """A candidate's greedy generation against the float model's."""

    shares: list[float]
    first_divergence: list[int | None]
    """Per case, the step (0-based) at which the candidate's token first differed, None when none did."""
    token_match: float
    min_logits_cosine: float
    floor: float
    min_cosine: float
    new_tokens: int

    @property
    def passed(self) -> bool:
        return self.token_match >= self.floor and self.min_logits_cosine >= self.min_cosine

    @property
    def message(self) -> str | None:
        misses = []
        if self.token_match < self.floor:
            worst = min(range(len(self.shares)), key=lambda i: self.shares[i])
            misses.append(
                f"token match {self.token_match:.2f} < {self.floor:g} (prompt {worst + 1} diverged at step "
                f"{self.first_divergence[worst]} of {self.new_tokens})"
            )
        if self.min_logits_cosine < self.min_cosine:
            misses.append(f"golden logits cosine {self.min_logits_cosine:.4f} < {self.min_cosine:g}")
        return "; ".join(misses) or None

    def to_json(self) -> dict[str, Any]:
        return {
            "token_match": round(self.token_match, 4),
            "floor": self.floor,
            "shares": [round(s, 4) for s in self.shares],
            "first_divergence": self.first_divergence,
            "new_tokens": self.new_tokens,
            "min_logits_cosine": round(self.min_logits_cosine, 6),
            "min_cosine": self.min_cosine,
            "passed": self.passed,
            "message": self.message,
        }


def _first_divergence(produced: Sequence[int], expected: Sequence[int]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(produced, expected, strict=False)) if a != b), None)


def _forced_logits(
    runner: Runner, layout: DecoderLayout, prompt: Sequence[int], tokens: Sequence[int]
) -> Any:
    """Logits at the positions that predict ``tokens``, from one call on the prompt and all but the last
    of them (an empty past): [len(tokens), vocab]."""
    ids = np.asarray([[*prompt, *tokens[:-1]]], dtype=np.int64)
    outputs = runner.run(step_inputs(layout, ids, empty_past(layout), 0))
    return np.asarray(outputs[0][0, len(prompt) - 1 :], dtype=np.float64)


def prepare_decoder(
    float_runner: Runner,
    layout: DecoderLayout,
    cases: Sequence[GenerationCase],
    new_tokens: int,
    floor: float,
) -> DecoderJudging:
    """The float model's tokens and teacher-forced logits for every golden case."""
    if not cases:
        raise ValueError("the decoder has no golden prompts to judge its lossy candidates by generation")
    expected = tuple(
        tuple(case.expected)
        if case.expected
        else tuple(greedy_tokens(float_runner, layout, case.prompt, new_tokens))
        for case in cases
    )
    logits = tuple(
        _forced_logits(float_runner, layout, case.prompt, tokens)
        for case, tokens in zip(cases, expected, strict=True)
    )
    return DecoderJudging(layout, tuple(cases), expected, logits, floor)


def judge_generation(runner: Runner, judging: DecoderJudging, min_cosine: float) -> GenerationJudgement:
    """Greedy tokens through ``runner`` against the float model's, and its teacher-forced logits' cosine."""
    shares: list[float] = []
    divergences: list[int | None] = []
    cosines: list[float] = []
    for case, expected, reference in zip(judging.cases, judging.expected, judging.logits, strict=True):
        produced = greedy_tokens(runner, judging.layout, case.prompt, len(expected))
        shares.append(match_share(expected, produced))
        divergences.append(_first_divergence(produced, expected))
        actual = _forced_logits(runner, judging.layout, case.prompt, expected)
        cosines.append(float(cosine_rows(actual, reference).min()) if np.all(np.isfinite(actual)) else 0.0)
    return GenerationJudgement(
        shares=shares,
        first_divergence=divergences,
        token_match=sum(shares) / len(shares),
        min_logits_cosine=min(cosines),
        floor=judging.floor,
        min_cosine=min_cosine,
        new_tokens=max(len(e) for e in judging.expected),
    )


def decode_plan(float_runner: Runner, layout: DecoderLayout, seed: int, past: int = DECODE_PAST) -> BatchPlan:
    """One decode step after ``past`` cached positions (the float model's own cache of a drawn prompt): the
    plan on which every decoder candidate is timed against its float model, per token."""
    past = max(1, min(past, layout.max_positions - 1))
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, layout.vocab_size, size=(1, past), dtype=np.int64)
    outputs = float_runner.run(step_inputs(layout, prompt, empty_past(layout), 0))
    token = np.asarray([[int(outputs[0][0, -1].argmax())]], dtype=np.int64)
    inputs = step_inputs(layout, token, [np.ascontiguousarray(o) for o in outputs[1:]], past)
    return BatchPlan(f"decode past={past}", 1, inputs)
