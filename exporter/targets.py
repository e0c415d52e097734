"""The conversion targets a user can ask for (``--to``): whatever the registered backends make."""

from __future__ import annotations

from collections.abc import Iterable

from exporter.backends import backends, targets
from exporter.errors import UsageError

__all__ = ["TARGETS", "TARGET_BACKENDS", "expand_targets"]

TARGETS = targets()
"""The built-in targets, in their canonical order (a backend registered later adds to ``targets()``)."""
TARGET_BACKENDS = {
    target: tuple(s.name for s in backends() if s.target == target and s.build is not None)
    for target in TARGETS
}


def expand_targets(requested: Iterable[str]) -> tuple[str, ...]:
    """``all`` means every target; order is the canonical one, duplicates collapse.

    Raises:
        UsageError: an unknown target or none at all.
    """
    known = targets()
    wanted: set[str] = set()
    for target in requested:
        if target == "all":
            wanted.update(known)
        elif target in known:
            wanted.add(target)
        else:
            raise UsageError(f"--to {target}: unknown target (choose from {', '.join(known)}, all)")
    if not wanted:
        raise UsageError(f"no target given: use --to with one of {', '.join(known)}, all")
    return tuple(t for t in known if t in wanted)
