"""Deployment flows, one file each; importing this package registers them all in FLOWS."""

from .base import FLOWS, Flow, Prepared
from . import cuda, imported, llama_cpp, onnxruntime_flow, torch_compile, torch_eager  # noqa: F401  (registration)

__all__ = ["FLOWS", "Flow", "Prepared"]
