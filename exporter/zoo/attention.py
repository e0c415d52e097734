"""A pre-norm transformer block: LayerNorm -> multi-head self-attention -> residual, LayerNorm -> GELU MLP
-> residual.

Why it matters for export: the sequence length is dynamic, so every reshape inside ``nn.MultiheadAttention``
(splitting heads, the ``(T, T)`` score matrix) must stay symbolic; an exporter that records a concrete length
produces a graph that only accepts the example's length. ``need_weights=False`` lets PyTorch use the fused
scaled-dot-product path, which exporters must decompose.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PreNormAttentionBlock", "build_attention"]


class PreNormAttentionBlock(nn.Module):
    """One pre-norm self-attention block over ``(B, T, C)`` tokens.

    Args:
        dim: Channels per token.
        heads: Attention heads (must divide ``dim``).
        mlp_ratio: Hidden width of the MLP as a multiple of ``dim``.
    """

    def __init__(self, dim: int = 64, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Linear(mlp_ratio * dim, dim),
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """Updated tokens, same shape as ``tokens`` ``(B, T, C)``."""
        h = self.norm1(tokens)  # (B, T, C)
        attended, _ = self.attention(h, h, h, need_weights=False)  # (B, T, C)
        tokens = tokens + attended  # (B, T, C)
        return tokens + self.mlp(self.norm2(tokens))  # (B, T, C)


def build_attention(*, dim: int = 64, heads: int = 4, mlp_ratio: int = 2) -> PreNormAttentionBlock:
    """A seeded :class:`PreNormAttentionBlock` in eval mode."""
    torch.manual_seed(0)
    return PreNormAttentionBlock(dim, heads, mlp_ratio).eval()
