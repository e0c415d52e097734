"""Find the model's weights in a training checkpoint: the dict a training loop saves around its state_dict.

Training code rarely saves a bare state_dict: Lightning and timm save ``{"state_dict": ..., "optimizer":
...}``, fairseq and torchvision's reference scripts ``{"model": ...}``, DeepSpeed ``{"module": ...}``,
PyTorch's tutorial ``{"model_state_dict": ...}``, many published models (speaker encoders among them)
``{"model_state": ..., "optimizer_state": ..., "step": ...}``, and EMA weights sit beside the raw ones
(``state_dict_ema``, ``model_ema``, ``params_ema``, ``ema``). ``--state-dict-key KEY`` names the entry
(``a.b`` for one nested in another); without it the common keys above are tried, and the weights are
taken only when exactly one holds them: a checkpoint with both raw and EMA weights is refused, naming
both, rather than silently exporting one of them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from exporter.errors import LoadError

__all__ = ["STATE_DICT_KEYS", "find_state_dict", "fit_owner_prefix", "strip_wrapper_prefixes"]

STATE_DICT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "network",
    "params",
    "weights",
    "state_dict_ema",
    "model_ema",
    "params_ema",
    "ema",
)
"""Keys training code saves a state_dict under, raw weights first, then EMA ones."""
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN_KEYS = 8


def find_state_dict(
    path: Path, payload: Any, key: str | None, notes: list[str]
) -> tuple[Mapping[str, torch.Tensor], str | None]:
    """The weights in ``payload`` (what ``torch.load`` returned) and the key they were under.

    ``key`` is ``--state-dict-key``; None tries the top level, then ``STATE_DICT_KEYS``. The key used is
    returned (None for a bare state_dict) and said in ``notes``, so the report shows where the weights
    came from and ``exporter verify --checkpoint`` can read them from the same entry.

    Raises:
        LoadError: ``key`` names no entry, or one that holds no tensors; without ``key``, no common key or
            several hold weights. Each message is one line naming the keys and ``--state-dict-key``.
    """
    if key is not None:
        return _named_entry(path, payload, key, notes), key
    if _is_tensor_mapping(payload):
        return payload, None
    if not isinstance(payload, Mapping):
        raise LoadError(f"checkpoint '{path}' holds {_a(payload)}, not a model or a state_dict")
    found = [k for k in STATE_DICT_KEYS if _is_tensor_mapping(payload.get(k))]
    if len(found) > 1:
        found = [k for k in found if payload[k]] or found  # an empty slot (no EMA kept) is no rival
    if len(found) > 1:
        raise LoadError(
            f"checkpoint '{path}' holds weights under several keys ({_listed(found)}); pass "
            "--state-dict-key with the one to export"
        )
    if found:
        notes.append(
            f"weights taken from the checkpoint's '{found[0]}' entry (the only common key holding "
            "them; --state-dict-key names another)"
        )
        return payload[found[0]], found[0]
    holding = [str(k) for k, v in payload.items() if _is_tensor_mapping(v)]
    hint = f"{_listed(holding)} hold tensors: " if holding else ""
    raise LoadError(
        f"checkpoint '{path}' is a dict without a state_dict under a common key (keys: "
        f"{_listed(list(payload))}); {hint}pass --state-dict-key KEY naming the entry with the weights"
    )


def _named_entry(path: Path, payload: Any, key: str, notes: list[str]) -> Mapping[str, torch.Tensor]:
    """``payload[key]``, or for ``a.b`` (when no key is literally ``a.b``) ``payload["a"]["b"]``."""
    where = f"--state-dict-key '{key}'"
    if isinstance(payload, Mapping) and key in payload:
        entry = payload[key]
    else:
        entry = payload
        walked: list[str] = []
        for part in key.split("."):
            owner = f"entry '{'.'.join(walked)}' of checkpoint '{path}'" if walked else f"checkpoint '{path}'"
            if not isinstance(entry, Mapping):
                raise LoadError(f"{where}: {owner} holds {_a(entry)}, not a dict")
            if part not in entry:
                raise LoadError(f"{where}: {owner} has no key '{part}' (keys: {_listed(list(entry))})")
            entry, walked = entry[part], [*walked, part]
    if not _is_tensor_mapping(entry):
        shown = f" (keys: {_listed(list(entry))})" if isinstance(entry, Mapping) else ""
        raise LoadError(
            f"{where}: that entry of checkpoint '{path}' holds {_a(entry)}{shown}, not tensors "
            "keyed by name; name the entry holding the model's state_dict"
        )
    notes.append(f"weights taken from the checkpoint's '{key}' entry (--state-dict-key)")
    return entry


def strip_wrapper_prefixes(weights: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """Drop the prefixes DataParallel (``module.``) and torch.compile (``_orig_mod.``) add to every key."""
    result = dict(weights)
    for prefix in _WRAPPER_PREFIXES:
        if result and all(k.startswith(prefix) for k in result):
            result = {k[len(prefix) :]: v for k, v in result.items()}
            notes.append(f"stripped the '{prefix}' prefix from every weight name")
    return result


def fit_owner_prefix(
    weights: Mapping[str, torch.Tensor], own: Collection[str], notes: list[str]
) -> Mapping[str, torch.Tensor]:
    """The model's weights out of a wrapper's: a LightningModule saves its network under its attribute's
    name (``model.``, ``net.``, ``encoder.``), beside other submodules' keys. Used only when the names do
    not already fit and one first component's keys, without it, are exactly the model's."""
    wanted = set(own)
    if not wanted or set(weights) == wanted:
        return weights
    for prefix in dict.fromkeys(k.split(".", 1)[0] + "." for k in weights if "." in k):
        inner = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        if set(inner) == wanted:
            others = len(weights) - len(inner)
            dropped = f"; {others} other entries (another submodule's) left out" if others else ""
            notes.append(
                f"weights taken from the '{prefix}' part of every name (a wrapper's attribute){dropped}"
            )
            return inner
    return weights


def _is_tensor_mapping(value: Any) -> bool:
    """A state_dict: tensors keyed by name (empty for a model without parameters or buffers)."""
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _listed(keys: list[Any]) -> str:
    """Keys as a message shows them: repr'd, the first few only."""
    shown = ", ".join(repr(k)[:60] for k in keys[:_SHOWN_KEYS])
    return shown + (", ..." if len(keys) > _SHOWN_KEYS else "")


def _a(value: Any) -> str:
    """``an int``, ``a list``: the type of a value, as a sentence names it."""
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"
