"""Flat named inputs and outputs around a transformers model, so every converter and runner sees tensors.

A transformers model takes keyword arguments and returns a ``ModelOutput``, and a decoder's cache is a
``DynamicCache`` object: no exporter can name those. ``EncoderWrapper`` passes the tokenizer's inputs through
and returns the task's outputs as a tuple; ``DecoderWithPast`` takes the cache as one tensor per layer and
kind (``past_key_values.N.key/value``), rebuilds the ``DynamicCache`` inside ``forward`` and returns
``logits`` and every ``present.N.key/value``, so one graph serves the prefill (past of length 0) and every
decode step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DecoderWithPast", "EncoderWrapper"]


class EncoderWrapper(torch.nn.Module):
    """An encoder's forward with the tokenizer's inputs by name and the task's outputs as a tuple."""

    def __init__(self, model: torch.nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.output_fields = tuple(outputs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return tuple(result[name] for name in self.output_fields)


class DecoderWithPast(torch.nn.Module):
    """A causal LM with its key/value cache as plain tensors, in the names ``exporter.hf.decoding`` feeds."""

    def __init__(self, model: torch.nn.Module, num_layers: int) -> None:
        super().__init__()
        self.model = model
        self.num_layers = num_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past_key_values: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)  # type: ignore[arg-type]
        for layer in range(self.num_layers):
            cache.update(past_key_values[2 * layer], past_key_values[2 * layer + 1], layer)
        result = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present: list[torch.Tensor] = []
        for layer in result.past_key_values.layers[: self.num_layers]:
            present += [layer.keys, layer.values]
        return (result.logits, *present)
