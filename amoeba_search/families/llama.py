"""LLaMA 2/3.x and SmolLM: split projections; `attention_bias` / `mlp_bias` give every projection a bias, so
FLAP compensation fits exactly (the other biases are zeros)."""

from .base import SPLIT, Family, register_family

register_family("llama", Family("llama", SPLIT, bias_flags={"self_attn.o_proj": {"attention_bias": True},
                                                             "mlp.down_proj": {"mlp_bias": True}},
                                gguf_arch="llama"))
