"""Models whose decoder layers have their own widths (heterogeneous subnets): the config field that lists them,
and the builder that gives every block exactly its own Linear shapes. Extraction writes such checkpoints; loading,
profiling and the GGUF writer read them."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from .families.base import family_of, shrunk_config
from .view import SkippedAttention, SkippedMLP, mlp_module

LAYER_SHAPES_KEY = "amoeba_layer_shapes"      # config.json field of a heterogeneous checkpoint: one shape per layer


def layer_shapes(config) -> list[dict] | None:
    """The per-layer shapes of a heterogeneous checkpoint's config, None for a uniform one."""
    return getattr(config, LAYER_SHAPES_KEY, None) or None


def per_layer_heads(config) -> tuple[list[int], list[int], list[int]]:
    """Query heads, KV heads and MLP width of every layer: the config's, or a heterogeneous subnet's own."""
    shapes = layer_shapes(config)
    if shapes:
        return [s["heads"] for s in shapes], [s["kv_heads"] for s in shapes], [s["mlp"] for s in shapes]
    n, heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return [heads] * n, [kv_heads] * n, [config.intermediate_size] * n


def layer_config(config, heads: int, kv_heads: int, channels: int):
    """The config one decoder block of a heterogeneous model is built from; a skipped sub-block (0 heads or 0
    channels) is built at full size and then replaced, so its sizes stay the model's."""
    return shrunk_config(config, num_attention_heads=heads or config.num_attention_heads,
                         num_key_value_heads=kv_heads or getattr(config, "num_key_value_heads", None)
                         or config.num_attention_heads, intermediate_size=channels or config.intermediate_size,
                         **{LAYER_SHAPES_KEY: None})


def model_for_config(config, dtype: torch.dtype) -> PreTrainedModel:
    """An (untrained) model of an extracted config: standard, or heterogeneous with each decoder block built from
    its own config (its head count, KV heads and MLP width), so every block holds exactly its own Linear shapes;
    a skipped attention or MLP sub-block is a parameter-free module that adds nothing."""
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    shapes = layer_shapes(config)
    if shapes:
        family, layers = family_of(config), model.base_model.layers
        for position, shape in enumerate(shapes):
            own = layer_config(config, shape["heads"], shape["kv_heads"], shape["mlp"])
            own._attn_implementation = model.config._attn_implementation     # not part of to_dict()
            block = type(layers[position])(own, position).to(dtype)
            if not shape["heads"]:
                setattr(block, family.attention, SkippedAttention(position))
            if not shape["mlp"]:
                setattr(block, mlp_module(family), SkippedMLP())
            layers[position] = block
    return model


