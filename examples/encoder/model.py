"""A small BERT-shaped sentence encoder: token ids and an attention mask in, pooled embedding out.

It exercises what text models need from an exporter: two integer inputs sharing dynamic ``batch`` and
``seq`` dims, a padding mask inside attention, and a dict output. The shipped checkpoint is seeded random
init (untrained): it is here to be exported, not to embed sentences well.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyEncoder(nn.Module):
    """Embeddings + ``nn.TransformerEncoder`` + masked mean pooling."""

    def __init__(
        self, vocab_size: int = 1000, dim: int = 64, heads: int = 4, layers: int = 2, max_len: int = 256
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        h = self.tokens(input_ids) + self.positions(positions)  # (B, T, C)
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)  # (B, T, C)
        h = self.norm(h)
        weights = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)
        return {"embedding": nn.functional.normalize(pooled, dim=-1), "token_states": h}


def build_encoder(vocab_size: int = 1000, dim: int = 64, layers: int = 2) -> TinyEncoder:
    return TinyEncoder(vocab_size=vocab_size, dim=dim, layers=layers)


if __name__ == "__main__":
    from pathlib import Path

    torch.manual_seed(0)
    model = build_encoder()
    target = Path(__file__).with_name("tiny_encoder.pt")
    torch.save({"state_dict": model.state_dict(), "note": "seeded random init (untrained)"}, target)
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")
