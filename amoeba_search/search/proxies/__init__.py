"""Accuracy proxies, one module each: a new proxy is one new file here with `@PROXIES.register("name")` on its
factory `(loaded, data_dir, samples=...) -> Proxy` (see base.py). Modules are found and imported lazily."""

from collections.abc import Callable

from ...registry import Registry

PROXIES = Registry("accuracy proxy", base=Callable, package=__name__)

__all__ = ["PROXIES"]
