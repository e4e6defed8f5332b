"""The narrow interface every deployment flow implements, and the registry they join."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel

from ...errors import UserError
from ..lut import LookupTable, Setting
from . import FLOWS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# GGUF block formats: 32 weights share a scale (q8_0: 32 bytes + fp16 scale) or a scale and a minimum (q4_1)
GGUF_BYTES_PER_ELEMENT = {"q8_0": 34 / 32, "q4_1": 20 / 32}


def element_bytes(dtype: str) -> float:
    """Bytes per element of a dtype name ('float16' -> 2, 'q4_1' -> 0.625); unknown names are a one-line error."""
    if dtype in GGUF_BYTES_PER_ELEMENT:
        return GGUF_BYTES_PER_ELEMENT[dtype]
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype):
        raise UserError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 (or int8 for estimates)")
    return torch.empty((), dtype=target).element_size()


@dataclass
class Prepared:
    """A ready-to-time step: `run` does one prefill/decode call, `reset` (untimed) undoes its state changes."""

    run: Callable[[], object]
    reset: Callable[[], object] | None = None


class Flow:
    """A way to deploy a model (runtime + settings). kind: 'measured' times it here, 'imported' reads results a
    user measured elsewhere, 'estimate' derives them from a device spec."""

    name: str = ""
    kind: str = "measured"
    device: str = "cpu"          # where it runs: 'cpu' or 'cuda'
    dtypes: tuple[str, ...] = ("float32",)
    packages: tuple[str, ...] = ("torch",)
    description: str = ""
    min_layers: int = 0          # smallest block count the runtime can load (profiles need a 0- or 1-layer anchor)

    def kv_cache_dtype(self, dtype: str) -> str:
        """The KV cache's element type for weights of `dtype`: the same in the torch flows."""
        return dtype

    def unavailable(self) -> str | None:
        """None when usable here, else one line saying what is missing and how to get it."""
        for package in self.packages:
            try:
                importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                return f"package {package!r} is not installed: pip install {package}"
        return None

    def versions(self) -> dict[str, str]:
        return {p: importlib.metadata.version(p) for p in self.packages}

    def require(self, dtype: str = "float32") -> None:
        reason = self.unavailable()
        if reason:
            raise UserError(f"flow {self.name!r} is unavailable here: {reason}")
        if dtype not in self.dtypes:
            raise UserError(f"flow {self.name!r} does not run dtype {dtype!r}: choose from {', '.join(self.dtypes)}")

    def prepare(self, model: PreTrainedModel, setting: Setting) -> Prepared:
        """Build the step this flow runs for one setting (phase, tokens, batch, dtype); timing is the harness's."""
        raise UserError(f"flow {self.name!r} is not timed by amoeba_search: import results with "
                        f"`amoeba profile import --flow {self.name} FILE.csv`")

    def note(self, store) -> str:
        """Anything else `amoeba flows` should say about this flow here (e.g. the specs an estimate can use)."""
        return ""

    def estimate(self, loaded, store, device: str, settings: list[Setting], grid) -> LookupTable:
        """Estimate flows (kind 'estimate') write a profile from a device description instead of timing."""
        raise UserError(f"flow {self.name!r} is measured, not estimated: run `amoeba profile --flow {self.name}`")

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def peak_memory_mib(self) -> float | None:
        """Peak device memory since the last reset (CUDA only; None on CPU, where tensors are sized analytically)."""
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return None

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()


def register(name: str) -> Callable[[type[Flow]], type[Flow]]:
    """Class decorator: one instance of the flow joins FLOWS under `name` (also its `name` attribute)."""
    def add(cls: type[Flow]) -> type[Flow]:
        cls.name = name
        FLOWS.register(name)(cls())
        return cls

    return add


def model_copy(model: PreTrainedModel, dtype: str, device: str = "cpu") -> PreTrainedModel:
    """The model in the flow's dtype and device (a copy when either differs, so the caller's model is untouched)."""
    target = DTYPES[dtype]
    if model.dtype == target and str(model.device).startswith(device):
        return model
    import copy

    return copy.deepcopy(model).to(device=device, dtype=target).eval()
