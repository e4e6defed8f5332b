"""One typed registry per pluggable kind (flows, proxies, tasks, selectors), so adding one is one new file.

Entries are lazy: a registry knows the modules that may define entries (every public module of a package, or a
given list) and reads their names from the source, without importing them, by finding the calls
`*register*("name", ...)`. `amoeba --help` therefore lists every flow and task in a tenth of a second, and a
module (with its heavy imports: torch, onnxruntime, llama-cpp) is imported only when one of its entries is used.
After the import the registry checks that the module registered exactly the names its source promised, so the
scan and the registrations cannot drift apart silently."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import pkgutil
from pathlib import Path
from typing import Callable, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


def declared_names(path: Path) -> list[str]:
    """Names a module registers: the first argument of every call to a function whose name contains
    'register' (`@FLOWS.register("x")`, `@register("x")`, `register_task("x", ...)`) when it is a literal string."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        first = node.args[0]
        if "register" in called and isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.append(first.value)
    return names


class Registry(Generic[T]):
    """Name -> implementation map that rejects duplicates and wrong types and suggests close names on a typo.

    package: every module of this package except `base` and `_private` ones may hold entries (so a new entry is
    a new file, no list to edit); modules: explicit module names instead. base: the type every entry must be an
    instance of, or 'module:attr' to resolve it lazily (it may live in a module that imports torch)."""

    def __init__(self, kind: str, base: type | str | None = None, package: str | None = None,
                 modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._base = base
        self._package = package
        self._modules = modules
        self._items: dict[str, T] = {}
        self._index: dict[str, str] | None = None     # name -> module that declares it

    # ---- registration ----
    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            base = self._base_type()
            if base is not None and not isinstance(item, base):
                raise TypeError(f"{self.kind} {name!r} must be a {base.__name__}, got {type(item).__name__}")
            self._items[name] = item
            return item

        return add

    def _base_type(self) -> type | None:
        if isinstance(self._base, str):
            module, attr = self._base.split(":")
            self._base = getattr(importlib.import_module(module), attr)
        return self._base

    # ---- lazy discovery ----
    def _module_names(self) -> list[str]:
        if self._package is None:
            return list(self._modules)
        package = importlib.import_module(self._package)
        return [f"{self._package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                if not m.name.startswith("_") and m.name != "base"]

    def index(self) -> dict[str, str]:
        """name -> defining module, from the modules' source (nothing imported but the package itself)."""
        if self._index is None:
            index: dict[str, str] = {}
            for module in self._module_names():
                spec = importlib.util.find_spec(module)
                if spec is None or spec.origin is None:
                    continue
                for name in declared_names(Path(spec.origin)):
                    if name in index:
                        raise ValueError(f"{self.kind} {name!r} is declared by {index[name]} and {module}")
                    index[name] = module
            self._index = index
        return self._index

    def refresh(self) -> None:
        """Forget the scanned index (after a module was added to the package at run time)."""
        self._index = None

    def _import(self, name: str) -> None:
        module = self.index().get(name)
        if module is None:
            return
        importlib.import_module(module)
        promised = sorted(n for n, m in self.index().items() if m == module)
        missing = [n for n in promised if n not in self._items]
        if missing:
            raise ValueError(f"{module} declares {self.kind} {missing} but did not register them")

    # ---- lookup ----
    def get(self, name: str) -> T:
        if name not in self._items:
            self._import(name)
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown {self.kind} {name!r}: {hint}choose from {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self.index()))

    def items(self) -> dict[str, T]:
        """Every entry, importing every module (contract tests, `amoeba flows`)."""
        return {name: self.get(name) for name in self.names()}

    def choices(self) -> str:
        """'a, b or c' for help texts."""
        names = self.names()
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
