"""Facts read off an ONNX graph or a module that the optimize stage and the int8 candidates decide by:
which operator domains it uses, whether it is a transformer, and its attention shape."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import onnx

from exporter.convert.onnx_files import read_structure

__all__ = ["STANDARD_DOMAINS", "infer_attention_shape", "looks_like_transformer", "nonstandard_domains"]

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def nonstandard_domains(path: Path) -> set[str]:
    """The operator domains outside the ONNX standard (``com.microsoft``, a local function's domain) that
    any node uses, in the main graph, its subgraphs or its functions: a model without any runs in every
    ONNX runtime, not only the one whose contrib ops it holds."""
    model = read_structure(path)
    nodes = [*_walk(model.graph.node), *(n for f in model.functions for n in _walk(f.node))]
    return {node.domain for node in nodes if node.domain not in STANDARD_DOMAINS}


def _walk(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node, then the nodes of its subgraphs (If branches, Loop and Scan bodies), depth first."""
    for node in nodes:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attribute.g.node)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for graph in attribute.graphs:
                    yield from _walk(graph.node)


def infer_attention_shape(module: Any) -> tuple[int, int]:
    """(heads, hidden size) of the model's attention, which the Attention fusion needs (ORT's own guess
    from the graph fails on common exports): a Hugging Face config, ``nn.MultiheadAttention``, or a layer
    with ``num_attention_heads`` and ``all_head_size``/``hidden_size``. (0, 0) when none is found."""
    import torch

    config = getattr(module, "config", None)
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if isinstance(heads, int) and isinstance(hidden, int):
        return heads, hidden
    for layer in module.modules():
        if isinstance(layer, torch.nn.MultiheadAttention):
            return int(layer.num_heads), int(layer.embed_dim)
        heads = getattr(layer, "num_attention_heads", None)
        hidden = getattr(layer, "all_head_size", None) or getattr(layer, "hidden_size", None)
        if isinstance(heads, int) and isinstance(hidden, int):
            return heads, hidden
    return 0, 0


FUSED_ATTENTION = frozenset(
    {"Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization"}
)
"""ONNX Runtime's transformer fusions: a graph holding them is a transformer whose Softmax sits inside."""


def looks_like_transformer(path: Path) -> bool:
    """Softmax over MatMuls next to layer norms (an attention block, where the fusions pay off), or the
    fused ops ONNX Runtime's transformer optimizer leaves. The int8 stage starts from the optimized graph:
    read as a plain network, the trained MiniLM's fused graph got NNCF's non-transformer defaults and a min
    cosine of 0.46, against 0.9955 with its transformer model type."""
    ops = {node.op_type for node in read_structure(path).graph.node}
    if ops & FUSED_ATTENTION:
        return True
    has_norm = "LayerNormalization" in ops or "ReduceMean" in ops
    return "Softmax" in ops and "MatMul" in ops and has_norm
