"""Qwen3: q_norm / k_norm over each head's head_dim (shared by all heads: kept whole); `attention_bias` gives
o_proj a bias, the MLP has none (attention compensation only)."""

from .base import SPLIT, Family, register_family

register_family("qwen3", Family("qwen3", SPLIT, bias_flags={"self_attn.o_proj": {"attention_bias": True}},
                                gguf_arch="qwen3"))
