"""The start-up check of a decoder's generate path: a golden generation (``golden/generation.json``, the
greedy tokens transformers' ``generate`` produced at export) replayed through ``POST .../generate``, the
path clients take, with end-of-sequence ignored and ``max_tokens`` the recorded count.

When the case has its text and the model a tokenizer, the text is what is sent, after checking that the
server's tokenizer encodes it to the prompt ids transformers' tokenizer gave at export: the text path is then
proven end to end. A float artifact must give the recorded tokens exactly; a lossy one (int8, int4) is
reported with the share of tokens that match before the first difference, as the export judged it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from exporter.hf.facts import GenerationCase
from exporter.hf.generation_check import match_share
from exporter.serving.decoder import GENERATION_FILE, DecoderServing
from exporter.serving.golden import GoldenMismatch, self_check_post

__all__ = ["generation_check", "matching_prefix"]


def matching_prefix(actual: list[int], expected: tuple[int, ...]) -> int:
    """How many tokens match before the first difference."""
    count = 0
    for got, wanted in zip(actual, expected, strict=False):
        if got != wanted:
            break
        count += 1
    return count


async def generation_check(url: str, token: str, decoder: DecoderServing, lossy: bool) -> str:
    """Replay the first golden generation through ``url`` (the generate path); a summary, or
    ``GoldenMismatch``."""
    if not decoder.cases:
        return f"no golden generation to replay ({GENERATION_FILE} absent)"
    case = decoder.cases[0]
    body: dict[str, Any] = {
        "id": f"golden-generation-{case.name}",
        "parameters": {"max_tokens": len(case.expected), "ignore_eos": True},
    }
    codec = decoder.codec()
    if codec is not None and case.text:
        encoded = codec.encode(case.text)
        if tuple(encoded) != case.prompt:
            raise GoldenMismatch(
                f"golden prompt '{case.name}': the tokenizer encodes its text as {encoded[:12]}..., "
                f"transformers' tokenizer gave {list(case.prompt[:12])}...; the text endpoint would differ"
            )
        body["text_input"] = case.text
    else:
        body["input_ids"] = list(case.prompt)
    reply = await asyncio.to_thread(_post, url, body, token)
    tokens = [int(t) for t in reply.get("output_ids", [])]
    matched = matching_prefix(tokens, case.expected)
    how = "text" if "text_input" in body else "token ids"
    if lossy:
        share = match_share(case.expected, tokens)
        return f"golden generation '{case.name}' ({how}): {share:.0%} of tokens match before a difference"
    if tokens != list(case.expected):
        raise GoldenMismatch(_difference(case, tokens, matched))
    return f"golden generation '{case.name}' ({how}): {len(tokens)} tokens identical through generate"


def _difference(case: GenerationCase, tokens: list[int], matched: int) -> str:
    if matched < min(len(tokens), len(case.expected)):
        return (
            f"golden generation '{case.name}': token {matched} is {tokens[matched]}, "
            f"expected {case.expected[matched]} (through POST .../generate)"
        )
    return f"golden generation '{case.name}': {len(tokens)} tokens came back, expected {len(case.expected)}"


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    content, _ = self_check_post(url, body, token, "golden generation")
    answer = json.loads(content)
    if not isinstance(answer, dict):
        raise GoldenMismatch(f"golden generation {body['id']}: the answer is not a JSON object")
    return answer
