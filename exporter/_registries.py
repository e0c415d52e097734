"""One registry shape for every extension point that is a list of named records (backends, lossy
candidates): registration order is the order they run and are listed in, and a name is registered once."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

__all__ = ["Registry"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """Named records in registration order. ``kind`` names them in errors (``backend``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add ``entry`` after those registered before it; the same record again is a no-op."""
        if entry.name in self._entries and self._entries[entry.name] is not entry:
            raise ValueError(f"{self.kind} '{entry.name}' is registered twice")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove a record (tests register toy ones and take them away again)."""
        self._entries.pop(name, None)

    def entries(self) -> list[T]:
        return list(self._entries.values())

    def get(self, name: str) -> T | None:
        return self._entries.get(name)
