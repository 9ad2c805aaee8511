"""Name → class registries: components are looked up by the names configs use."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from dglkd.errors import DglkdError, quoted

T = TypeVar("T")


def _origin(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """A small named registry; unknown names raise an error listing what exists.

    Registering the same object again, or a class defined at the same module path (a
    notebook cell or a module run twice), replaces the entry quietly; a different object
    under a taken name is a one-line error.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loaders: list[Callable[[], None]] = []

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            key = name.lower()
            taken = self._entries.get(key)
            if taken is not None and taken is not obj and _origin(taken) != _origin(obj):
                raise DglkdError(f"{self.kind} {key!r} is already registered by "
                                 f"{_origin(taken)}; register {_origin(obj)} under another name")
            self._entries[key] = obj
            return obj

        return decorate

    def add_loader(self, load: Callable[[], None]) -> None:
        """``load()`` runs once, before the first look-up, to register more entries
        (plugins found through package entry points)."""
        self._loaders.append(load)

    def _load_plugins(self) -> None:
        while self._loaders:
            self._loaders.pop(0)()

    def get(self, name: str, key: str | None = None) -> T:
        self._load_plugins()
        entry = self._entries.get(str(name).lower())
        if entry is None:
            where = f"{key}: " if key else ""
            raise DglkdError(
                f"{where}unknown {self.kind} {quoted(name)}; allowed: {', '.join(self.names())}"
            )
        return entry

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
