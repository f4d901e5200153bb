"""One small registry per pluggable kind (datasets, backbones, clusterers, methods).

Things register themselves where they are defined with ``@REGISTRY.register("name")``. A duplicate
name is a programming error; an unknown name is a user error that lists the valid names and the
option the user typed it into. The first lookup in any registry imports the third-party plug-ins
(``uda_reid.plugins``), so what they register is there like the built-in names.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError
from .plugins import load_plugins

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factory functions)."""

    def __init__(self, kind: str, option: str) -> None:
        self.kind = kind  # e.g. "dataset"
        self.option = option  # e.g. "--dataset": named in error messages
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            if isinstance(obj, type):  # a class knows the name it is registered under (logs, summaries)
                obj.registered_name = name
            return obj

        return decorator

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r} for {self.option}; known: {known}"
            ) from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
