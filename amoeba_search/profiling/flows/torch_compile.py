"""torch.compile (inductor) with regional compilation: each decoder block is compiled once and the compiled code
is reused by every block of the same shape (PyTorch's recommended way to compile LLMs without long cold starts)."""

from __future__ import annotations

import torch

from .base import Flow, Prepared, model_copy, register
from ..lut import Setting
from ..step import KVStep, step_inputs


def compiled_step(model, setting: Setting, device: str) -> Prepared:
    """KVStep over a model whose decoder blocks are compiled in place. Dynamo is reset first: it recompiles a code
    object for at most `recompile_limit` (8) shapes and then silently runs it eagerly, which a profile of 40+
    shapes would otherwise hit, timing eager code under this flow's name."""
    torch._dynamo.reset()
    for layer in model.model.layers:
        # The layer index only addresses a shared Cache; ours is per layer, and one value lets all blocks share code.
        layer.self_attn.layer_idx = 0
        layer.compile(dynamic=False)
    step = KVStep(model).eval()
    inputs = step_inputs(model, setting.phase, setting.tokens, setting.batch, device)

    def run():
        with torch.inference_mode():
            return step(*inputs)

    return Prepared(run)


@register("torch-compile")
class TorchCompile(Flow):
    description = "KVStep with each decoder block compiled by inductor (regional compilation), CPU"

    def prepare(self, model, setting):
        self.require(setting.dtype)
        import copy

        return compiled_step(copy.deepcopy(model_copy(model, setting.dtype)), setting, "cpu")
