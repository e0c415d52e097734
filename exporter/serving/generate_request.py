"""A generate request (Triton's generate extension) checked before the model sees it: ``text_input`` (when
the model has a tokenizer) or ``input_ids``, and ``max_tokens`` / ``ignore_eos`` in ``parameters`` (or at
the top level, where Triton's own examples put them). A request that does not fit is a ``RequestError``
naming the field, answered 400, as for infer.

Decoding is greedy: ``temperature`` 0 and ``do_sample`` false are accepted, and ``stream`` as a boolean (the
path decides), but any other sampling parameter is refused by name rather than silently ignored. Unknown
fields are refused too: Triton would feed them to the model as inputs, which a decoder here has none for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from exporter.serving import json_chunks
from exporter.serving.decoder import DecoderServing, TextCodec
from exporter.serving.protocol import RequestError

__all__ = ["DEFAULT_MAX_TOKENS", "GenerateRequest", "parse_generate_request"]

DEFAULT_MAX_TOKENS = 16
"""New tokens when a request does not say (Triton's TensorRT-LLM examples use 16 too)."""

_TOP = frozenset({"id", "text_input", "input_ids", "parameters", "max_tokens", "ignore_eos"})
_PARAMETERS = frozenset({"max_tokens", "ignore_eos", "temperature", "do_sample", "stream"})


@dataclass(frozen=True)
class GenerateRequest:
    id: str | None
    prompt: tuple[int, ...]
    max_tokens: int
    stop_at_eos: bool


def parse_generate_request(
    body: bytes, decoder: DecoderServing, codec: TextCodec | None, max_prompt: int
) -> GenerateRequest:
    """The request checked against the decoder's vocabulary and context (``max_prompt``: the longest
    prompt the model takes, its ``seq`` dim's maximum within the context).

    Raises:
        RequestError: not a JSON object, an unknown field, no prompt or two, a prompt of the wrong type,
            empty, too long or with ids outside the vocabulary, text without a tokenizer, ``max_tokens`` not
            a positive integer or beyond the context, ``ignore_eos`` not a boolean, a sampling parameter.
    """
    try:
        document = json_chunks.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError("body", f"is not JSON ({str(error).splitlines()[0][:80]})") from None
    if not isinstance(document, dict):
        raise RequestError("body", "must be a JSON object with 'text_input' or 'input_ids'")
    for key in document:
        if key not in _TOP:
            known = ", ".join(sorted(_TOP))
            raise RequestError(str(key)[:60], f"is not a field of a generate request ({known})")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("id", "must be a string")
    options = _options(document)
    prompt = _prompt(document, decoder, codec, max_prompt)
    max_tokens = options.get("max_tokens", DEFAULT_MAX_TOKENS)
    where = _where(document, "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(where, "must be a positive integer")
    context = decoder.layout.max_positions
    if max_tokens > context:
        raise RequestError(where, f"is {max_tokens}; the model's context is {context} tokens")
    ignore_eos = options.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError(_where(document, "ignore_eos"), "must be true or false")
    return GenerateRequest(request_id, prompt, max_tokens, not ignore_eos)


def _where(document: dict[str, Any], key: str) -> str:
    return key if key in document else f"parameters.{key}"


def _options(document: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` merged with the top-level ``max_tokens`` / ``ignore_eos`` (one place each)."""
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError("parameters", "must be an object")
    for key, value in parameters.items():
        field = f"parameters.{str(key)[:60]}"
        if key not in _PARAMETERS:
            raise RequestError(field, "is not supported: decoding is greedy (max_tokens, ignore_eos)")
        if key == "temperature" and (not isinstance(value, int | float) or isinstance(value, bool) or value):
            raise RequestError(field, "must be 0: this server decodes greedily")
        if key == "do_sample" and value is not False:
            raise RequestError(field, "must be false: this server decodes greedily")
        if key == "stream" and not isinstance(value, bool):
            raise RequestError(field, "must be true or false (the path decides: generate or generate_stream)")
    merged = dict(parameters)
    for key in ("max_tokens", "ignore_eos"):
        if key in document:
            if key in parameters:
                raise RequestError(key, f"is given twice (top level and parameters.{key})")
            merged[key] = document[key]
    return merged


def _prompt(
    document: dict[str, Any], decoder: DecoderServing, codec: TextCodec | None, max_prompt: int
) -> tuple[int, ...]:
    has_text, has_ids = "text_input" in document, "input_ids" in document
    if has_text and has_ids:
        raise RequestError("input_ids", "give text_input or input_ids, not both")
    if has_text:
        text = document["text_input"]
        if codec is None:
            raise RequestError("text_input", f"this model serves {decoder.tokenizer_note}; send input_ids")
        if not isinstance(text, str):
            raise RequestError("text_input", "must be a string")
        if not text:
            raise RequestError("text_input", "is empty")
        ids = codec.encode(text)
        if not ids:
            raise RequestError("text_input", "encodes to no tokens")
        field = "text_input"
    elif has_ids:
        ids = document["input_ids"]
        field = "input_ids"
        if not isinstance(ids, list) or not ids:
            raise RequestError(field, "must be a non-empty list of token ids")
        vocab = decoder.layout.vocab_size
        for index, value in enumerate(ids):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab:
                shown = json.dumps(value)[:30]
                raise RequestError(f"input_ids[{index}]", f"{shown} is not a token id in [0, {vocab})")
    else:
        if codec is None:
            raise RequestError("input_ids", f"missing: this model serves {decoder.tokenizer_note}")
        raise RequestError("text_input", "missing: a generate request needs text_input or input_ids")
    if len(ids) > max_prompt:
        raise RequestError(field, f"is {len(ids)} tokens; the model takes prompts of at most {max_prompt}")
    return tuple(int(i) for i in ids)
