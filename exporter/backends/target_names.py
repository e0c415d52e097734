"""The conversion targets a user can ask for (``--to``): whatever the registered backends make."""

from __future__ import annotations

from collections.abc import Iterable

from exporter.backends.registry import backends, targets
from exporter.errors import UsageError

__all__ = ["TARGETS", "TARGET_BACKENDS", "expand_targets"]

TARGETS = targets()
"""The built-in targets, in their canonical order (a backend registered later adds to ``targets()``)."""
TARGET_BACKENDS = {
    target: tuple(s.name for s in backends() if s.target == target and s.build is not None)
    for target in TARGETS
}


def expand_targets(requested: Iterable[str], skip: Iterable[str] = ()) -> tuple[str, ...]:
    """``all`` means every target; order is the canonical one, duplicates collapse; ``skip`` (``--skip``,
    a recipe's ``skip`` and ``not_applicable``) leaves targets out, so ``--to all --skip compile`` works.

    Raises:
        UsageError: an unknown target, none at all, or a ``skip`` that leaves none.
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
    skipped = set(skip)
    unknown = sorted(skipped - set(known))
    if unknown:
        raise UsageError(f"--skip {unknown[0]}: unknown target (choose from {', '.join(known)})")
    chosen = tuple(t for t in known if t in wanted and t not in skipped)
    if not chosen:
        raise UsageError(
            f"--skip {', '.join(t for t in known if t in skipped)} leaves no target of --to "
            f"{', '.join(t for t in known if t in wanted)}: skip fewer"
        )
    return chosen
