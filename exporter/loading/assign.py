"""Weights into an architecture without a second copy of them.

``factory()`` then ``load_state_dict`` holds the weights twice at its peak (the factory's random ones and
the checkpoint's) and spends seconds drawing random numbers for a billion parameters only to overwrite
them. Instead the factory builds on the meta device (shapes, no storage) and the checkpoint's tensors,
memory-mapped by ``torch.load(mmap=True)``, are assigned in place of the parameters, so the model's weights
*are* the file's pages: resident only once touched, and clean (the kernel can drop and re-read them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from exporter._quiet import quiet_logs

__all__ = ["build_on_meta", "load_assigned", "meta_tensors_left"]


def build_on_meta(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """``factory(**kwargs)`` with every tensor it makes on the meta device; None when it fails there (a
    factory that reads values, loads files or calls ops meta tensors lack), for the caller to build it the
    ordinary way."""
    try:
        with quiet_logs(), torch.device("meta"):
            return factory(**dict(kwargs))
    except Exception:
        return None


def meta_tensors_left(module: torch.nn.Module) -> list[str]:
    """Parameters and buffers still on the meta device: ones the state_dict does not hold (non-persistent
    buffers computed in ``__init__``), which a meta build cannot supply."""
    return [
        name
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]
        if tensor.device.type == "meta"
    ]


def load_assigned(module: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Assign ``weights`` as ``module``'s parameters and buffers (no copy), keeping the module's dtypes
    (a tensor of another dtype is converted, as ``load_state_dict`` would) and its tied parameters tied
    (two names for one parameter stay one tensor, so an exporter writes it once)."""
    own = module.state_dict(keep_vars=True)
    fitted = {
        key: tensor if key not in own or tensor.dtype == own[key].dtype else tensor.to(own[key].dtype)
        for key, tensor in weights.items()
    }
    tied = _tied_groups(module)
    module.load_state_dict(fitted, strict=True, assign=True)
    for names in tied:
        first = module.get_parameter(names[0])
        for name in names[1:]:
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, leaf, first)


def _tied_groups(module: torch.nn.Module) -> list[list[str]]:
    """Names that share one parameter object (tied embeddings and heads), before assignment unties them."""
    groups: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return [names for names in groups.values() if len(names) > 1]
