"""Weights assigned into a meta-built architecture (``exporter.loading.assign``): values, ties, buffers
computed in ``__init__`` and dtypes come out as ``load_state_dict`` would make them."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from exporter.loading.checkpoint import LoadRequest, load_model


class TiedLM(nn.Module):
    """An embedding whose weight the output head shares, and a sinusoid table computed in ``__init__``
    (a non-persistent buffer: not in the state_dict, so a meta build cannot supply it)."""

    def __init__(self, with_table: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.head = nn.Linear(8, 32, bias=False)
        self.head.weight = self.embed.weight
        self.with_table = with_table
        if with_table:
            angles = torch.arange(16).unsqueeze(1) / (10000 ** (torch.arange(8) / 8))
            self.register_buffer("table", torch.sin(angles), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        if self.with_table:
            hidden = hidden + self.table[: ids.shape[-1]]
        return self.head(hidden)


def make_tied(with_table: bool = False) -> TiedLM:
    return TiedLM(with_table)


def _save(tmp_path: Path, with_table: bool, dtype: torch.dtype = torch.float32) -> tuple[Path, TiedLM]:
    torch.manual_seed(3)
    model = TiedLM(with_table).eval()
    path = tmp_path / "tied.pt"
    torch.save({k: v.to(dtype) for k, v in model.state_dict().items()}, path)
    return path, model


def _load(path: Path, with_table: bool) -> nn.Module:
    request = LoadRequest(path, f"{__file__}:make_tied", {"with_table": with_table})
    return load_model(request).module


def test_tied_weights_stay_one_tensor_and_values_match(tmp_path: Path) -> None:
    path, original = _save(tmp_path, with_table=False)
    loaded = _load(path, with_table=False)
    assert loaded.head.weight is loaded.embed.weight
    assert len(list(loaded.parameters())) == 1
    ids = torch.tensor([[1, 5, 7]])
    assert torch.equal(loaded(ids), original(ids))


def test_buffers_computed_in_init_are_rebuilt_for_real(tmp_path: Path) -> None:
    path, original = _save(tmp_path, with_table=True)
    loaded = _load(path, with_table=True)
    assert loaded.table.device.type == "cpu"
    assert math.isclose(float(loaded.table[3, 0]), math.sin(3.0), rel_tol=1e-6)
    ids = torch.tensor([[2, 4]])
    assert torch.equal(loaded(ids), original(ids))


def test_weights_of_another_dtype_take_the_models_dtype(tmp_path: Path) -> None:
    path, original = _save(tmp_path, with_table=False, dtype=torch.float16)
    loaded = _load(path, with_table=False)
    assert loaded.embed.weight.dtype == torch.float32
    expected = original.embed.weight.detach().half().float()
    assert torch.equal(loaded.embed.weight.detach(), expected)
