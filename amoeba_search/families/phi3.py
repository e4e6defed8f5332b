"""Phi-3: fused qkv_proj (rows: query heads, then key groups, then value groups) and gate_up_proj (rows: gate
channels, then up channels); the attention splits qkv at config.num_attention_heads, so a view sets it (one head
count for every kept layer). No biases (no compensation)."""

from .base import Family, Projection, register_family

register_family("phi3", Family("phi3", (
    Projection("self_attn.qkv_proj", rows=("heads", "groups", "groups")),
    Projection("self_attn.o_proj", cols=("heads",)),
    Projection("mlp.gate_up_proj", rows=("channels", "channels")),
    Projection("mlp.down_proj", cols=("channels",)),
), heads_from_config=True, gguf_arch="phi3"))
