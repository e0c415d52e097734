"""The input spec of a Hugging Face folder, from its config and tokenizer: no ``--input`` needed.

Token inputs are int64 ``[batch, seq]`` with ids drawn below ``vocab_size`` and the sequence up to
``max_position_embeddings``. A decoder exported with its cache also takes ``position_ids`` and one
``[batch, kv_heads, past, head_dim]`` tensor per layer and kind, with ``attention_mask`` over ``total =
past + seq``; ``seq`` and ``past`` each get half the context (of at most ``DECODER_VERIFIED_CONTEXT``), so
every case verified fits in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.hf.decoding import DecoderLayout
from exporter.hf.tasks import Task
from exporter.specs.inputs import DynamicDim, InputSpec, parse_tensor_spec

__all__ = [
    "DECODER_MAX_BATCH",
    "DECODER_VERIFIED_CONTEXT",
    "MAX_BATCH",
    "FolderSpec",
    "decoder_layout",
    "folder_spec",
]

MAX_BATCH = 4
"""The batch range verified (1..4) for an encoder."""
DECODER_MAX_BATCH = 2
"""A decoder's batch range (1..2): generation runs one prompt at a time, and every dim of the ``max``
case at once costs batch x seq x vocab floats of logits."""
DECODER_VERIFIED_CONTEXT = 512
"""A decoder's ``seq`` and ``past`` ranges each cover half of its context, but of at most this many
positions: the ``max`` case holds every dim at its maximum at once (a 125M Llama with a 2,048 context
took 12 GiB and wrote 0.8 GB of golden outputs for it). ``--input`` widens a range."""
_ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class FolderSpec:
    """What the folder's config says the model takes and returns."""

    spec: InputSpec
    output_names: tuple[str, ...]
    layout: DecoderLayout | None


def decoder_layout(config: Any, eos_token_ids: Sequence[int]) -> DecoderLayout:
    """The cache's shape from a transformers config object (GPT-2's ``n_head`` etc. read through its
    attribute map)."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return DecoderLayout(
        num_layers=int(config.num_hidden_layers),
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=int(config.vocab_size),
        max_positions=int(config.max_position_embeddings),
        eos_token_ids=tuple(eos_token_ids),
    )


def folder_spec(
    task: Task, config: Any, input_names: Sequence[str], eos_token_ids: Sequence[int]
) -> FolderSpec:
    """The spec for ``task``: ``input_names`` are the inputs the tokenizer makes and ``forward`` takes (for
    an encoder); a decoder's inputs are fixed by the cache layout."""
    vocab = int(config.vocab_size)
    positions = int(getattr(config, "max_position_embeddings", None) or 512)
    batch = DynamicDim("batch", 1, MAX_BATCH)
    if task.is_decoder:
        layout = decoder_layout(config, eos_token_ids)
        half = max(min(positions, DECODER_VERIFIED_CONTEXT) // 2, 1)
        batch = DynamicDim("batch", 1, DECODER_MAX_BATCH)
        texts = [
            f"input_ids:int64:batch=1,seq=1:0..{vocab}",
            "attention_mask:int64:batch=1,total=past+seq:1..2",
            f"position_ids:int64:batch=1,seq=1:0..{positions}",
            *(
                f"{name}:float32:batch=1,{layout.kv_heads},past=0,{layout.head_dim}"
                for name in layout.past_names
            ),
        ]
        dims = (batch, DynamicDim("seq", 1, half), DynamicDim("past", 0, half))
        return FolderSpec(_spec(texts, dims), layout.output_names, layout)
    type_vocab = int(getattr(config, "type_vocab_size", 0) or 0)
    ranges: Mapping[str, str] = {
        "input_ids": f"0..{vocab}",
        "attention_mask": "1..2",
        "token_type_ids": f"0..{max(type_vocab, 1)}",
    }
    names = [name for name in _ENCODER_INPUTS if name in input_names]
    texts = [f"{name}:int64:batch=1,seq=1:{ranges[name]}" for name in names]
    return FolderSpec(_spec(texts, (batch, DynamicDim("seq", 1, positions))), task.outputs, None)


def _spec(texts: Sequence[str], dims: Sequence[DynamicDim]) -> InputSpec:
    """Ranges beside the inputs (as a recipe's ``[inputs.dims]``), so ``--input`` can replace one."""
    return InputSpec(tuple(parse_tensor_spec(text) for text in texts), tuple(dims))
