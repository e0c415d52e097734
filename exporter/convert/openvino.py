"""OpenVINO's converter, called the one way exporter calls it: without its usage telemetry.

``ov.convert_model`` sends usage events unless the user opted out with a consent file in their home (it
asks no one first). Each event forks the whole Python process to post it (``openvino_telemetry``'s GA4
backend, to survive a missing network), so during a 6 GB model's conversion every event briefly doubles
the process tree's resident memory as counted, and on a machine without internet it waits out a timeout.
Exporter runs offline and in CI; it converts with the telemetry sender silenced instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["convert_model", "without_telemetry"]


@contextlib.contextmanager
def without_telemetry() -> Iterator[None]:
    """Make the telemetry backend's ``send`` a no-op while the block runs (the converter makes a fresh
    ``Telemetry`` per event and re-reads the consent file each time, so only the sender is a stable place).
    Nothing to do in a build without the telemetry package."""
    try:
        from openvino_telemetry.backend.backend_ga4 import GA4Backend
    except ImportError:
        yield
        return
    original = GA4Backend.send
    GA4Backend.send = lambda self, message: None
    try:
        yield
    finally:
        GA4Backend.send = original


def convert_model(source: Any, **kwargs: Any) -> Any:
    """``ov.convert_model(source, **kwargs)`` without telemetry."""
    with without_telemetry():
        import openvino as ov  # its first import sends an event too

        return ov.convert_model(source, **kwargs)
