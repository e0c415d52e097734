"""A top-k (k=2) mixture-of-experts layer: a softmax gate picks two expert MLPs per token.

Why it matters for export: routing is data-dependent. The common eager formulation (find the tokens routed to
each expert with ``nonzero``/boolean indexing, run the expert on just those, scatter back) produces tensors
whose sizes depend on the values, which ``torch.export`` can only express as unbacked symbols and ONNX
exporters often refuse. This layer uses the export-friendly dense formulation: every expert runs on every
token, and ``torch.topk`` indices are scattered into a dense ``(B, T, E)`` weight mask that is zero for
unselected experts. All shapes then depend only on the (dynamic) batch and sequence sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Expert", "TopKMixtureOfExperts", "build_moe"]


class Expert(nn.Module):
    """One expert: ``Linear -> GELU -> Linear`` on each token."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(tokens)))  # (B, T, C)


class TopKMixtureOfExperts(nn.Module):
    """Top-k gated mixture of expert MLPs, with a pre-norm residual around it.

    Args:
        dim: Channels per token.
        hidden: Hidden width of each expert.
        experts: Number of experts.
        k: Experts mixed per token; their gate probabilities are renormalised to sum to one.
    """

    def __init__(self, dim: int = 32, hidden: int = 64, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        if not 1 <= k <= experts:
            raise ValueError(f"k must be between 1 and experts ({experts}), got {k}")
        self.k = k
        self.norm = nn.LayerNorm(dim)
        self.gate = nn.Linear(dim, experts)
        self.experts = nn.ModuleList([Expert(dim, hidden) for _ in range(experts)])

    def routing(self, tokens: Tensor) -> Tensor:
        """Dense mixing weights ``(B, T, E)``: the renormalised top-k gate probabilities, zero elsewhere."""
        probs = torch.softmax(self.gate(tokens), dim=-1)  # (B, T, E)
        top_p, top_i = torch.topk(probs, self.k, dim=-1)  # (B, T, k), (B, T, k)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)  # (B, T, k)
        return torch.zeros_like(probs).scatter(-1, top_i, top_p)  # (B, T, E)

    def forward(self, tokens: Tensor) -> Tensor:
        """Updated tokens, same shape as ``tokens`` ``(B, T, C)``."""
        h = self.norm(tokens)  # (B, T, C)
        weights = self.routing(h)  # (B, T, E)
        outputs = torch.stack([expert(h) for expert in self.experts], dim=-1)  # (B, T, C, E)
        mixed = (outputs * weights.unsqueeze(-2)).sum(dim=-1)  # (B, T, C)
        return tokens + mixed  # (B, T, C)


def build_moe(*, dim: int = 32, hidden: int = 64, experts: int = 4, k: int = 2) -> TopKMixtureOfExperts:
    """A seeded :class:`TopKMixtureOfExperts` in eval mode."""
    torch.manual_seed(0)
    return TopKMixtureOfExperts(dim, hidden, experts, k).eval()
