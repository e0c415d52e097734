"""Names a package offers but imports on first use (PEP 562), so importing the package stays cheap: the
server imports ``exporter`` without torch, and ``exporter --help`` does not load the pipeline."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, home_of: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name in ``home_of`` is imported from its module the
    first time it is asked for and then kept on the package (a test may still replace it there)."""

    def __getattr__(name: str) -> Any:
        home = home_of.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
