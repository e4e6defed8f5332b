"""One typed registry per pluggable kind (tasks, flows, selectors), so adding one is a single decorated definition."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation map that rejects duplicates and suggests close names on a typo."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, self._items, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown {self.kind} {name!r}: {hint}choose from {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted(self._items)
