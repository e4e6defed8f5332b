"""PyTorch eager through transformers' own forward and DynamicCache: what a plain `transformers` user deploys."""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedModel

from .base import Flow, Prepared, model_copy, register
from ..lut import Setting
from ..step import step_inputs


def cache_argument(model: PreTrainedModel) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); use whichever this version's forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def hf_step(model: PreTrainedModel, setting: Setting, device: str) -> Prepared:
    """Prefill: a fresh cache each call. Decode: a cache filled with `tokens` tokens, cropped back after each call (untimed)."""
    ids = step_inputs(model, "prefill", setting.tokens, setting.batch, device)[0]
    name = cache_argument(model)
    if setting.phase == "prefill":
        def run():
            with torch.inference_mode():
                return model(input_ids=ids, **{name: DynamicCache(config=model.config)}, use_cache=True,
                             logits_to_keep=1)

        return Prepared(run)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids, **{name: cache}, use_cache=True, logits_to_keep=1)
    new = ids[:, :1]

    def run():
        with torch.inference_mode():
            return model(input_ids=new, **{name: cache}, use_cache=True, logits_to_keep=1)

    return Prepared(run, reset=lambda: cache.crop(-new.shape[1]))


@register("torch-eager")
class TorchEager(Flow):
    dtypes = ("float32", "bfloat16")
    description = "transformers forward + DynamicCache, PyTorch eager on the CPU"

    def prepare(self, model, setting):
        self.require(setting.dtype)
        return hf_step(model_copy(model, setting.dtype), setting, "cpu")
