"""Name → class registries: components are looked up by the names configs use."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from dglkd.errors import DglkdError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small named registry; unknown names raise an error listing what exists."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            key = name.lower()
            if key in self._entries:
                raise RuntimeError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorate

    def get(self, name: str, key: str | None = None) -> T:
        entry = self._entries.get(str(name).lower())
        if entry is None:
            where = f"{key}: " if key else ""
            raise DglkdError(
                f"{where}unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
            )
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
