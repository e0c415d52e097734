"""An encoder's real-text golden case: the built-in sentences through the folder's own tokenizer, padded to
one batch, verified on every backend beside the cases drawn from the spec (random ids never pad, and real
padding is where attention masks go wrong)."""

from __future__ import annotations

from typing import Any

from exporter.errors import InputSpecError, first_line
from exporter.hf.load import golden_token_inputs
from exporter.runners.base import Runner
from exporter.specs.inputs import InputSpec, ShapeCase
from exporter.verify.parity import GoldenCase

__all__ = ["tokenized_golden"]


def tokenized_golden(reference: Runner, spec: InputSpec, tokenizer: Any) -> GoldenCase:
    """The ``tokenizer`` case: the golden sentences' inputs and the reference's outputs on them.

    Raises:
        InputSpecError: the tokenizer's ids do not fit the model (a vocabulary larger than the config's).
    """
    labels = spec.example_sizes
    batch = spec.dim("batch").max if "batch" in labels else None
    seq = spec.dim("seq").max if "seq" in labels else None
    inputs = golden_token_inputs(tokenizer, spec.names, batch, seq)
    batch, seq = inputs[spec.names[0]].shape
    try:
        outputs = reference.run(inputs)
    except Exception as error:
        raise InputSpecError(
            f"the model fails on the golden sentences through the folder's tokenizer ({batch} x {seq} "
            f"tokens): {first_line(error)}; check that the tokenizer belongs to this model"
        ) from None
    names = list(getattr(reference, "output_names", [])) or [f"output_{i}" for i in range(len(outputs))]
    return GoldenCase(ShapeCase("tokenizer", {"batch": batch, "seq": seq}), 0, inputs, outputs, names)
