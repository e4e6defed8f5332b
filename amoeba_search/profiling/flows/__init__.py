"""Deployment flows, one module each: a new flow is one new file here whose class carries `@register("name")`
(from .base). FLOWS finds the modules and their names without importing them; a flow's module (and its runtime)
is imported when the flow is first used."""

from ...registry import Registry

FLOWS = Registry("flow", base="amoeba_search.profiling.flows.base:Flow", package=__name__)

__all__ = ["FLOWS"]
