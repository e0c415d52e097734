"""The OpenVINO CPU plugin settings exporter records in a manifest, and the check that refuses any other:
shared by the backend, ``exporter verify`` and the model server, and free of torch.
"""

from __future__ import annotations

from collections.abc import Mapping

from exporter.errors import UsageError

__all__ = ["PRECISION_HINT", "checked_config"]

PRECISION_HINT = "INFERENCE_PRECISION_HINT"

_ALLOWED_SETTINGS = {
    PRECISION_HINT: {"f32", "bf16", "f16"},
    "PERFORMANCE_HINT": {"LATENCY", "THROUGHPUT"},
    "INFERENCE_NUM_THREADS": None,
}


def checked_config(config: Mapping[str, str]) -> dict[str, str]:
    """A recorded plugin config, refused unless every key and value is one we write: a manifest may be
    hostile, and some plugin settings write files (``CACHE_DIR``) or load code.

    Raises:
        UsageError: an unknown key, or a value outside what that key takes.
    """
    for key, value in config.items():
        if key not in _ALLOWED_SETTINGS:
            allowed = ", ".join(_ALLOWED_SETTINGS)
            raise UsageError(f"OpenVINO setting '{key}' is not one exporter records ({allowed}); refusing it")
        values = _ALLOWED_SETTINGS[key]
        valid = value.isdigit() and int(value) <= 4096 if values is None else value in values
        if not isinstance(value, str) or not valid:
            raise UsageError(f"OpenVINO setting {key}={value!r} is not a value exporter records; refusing it")
    return dict(config)
