"""Gemma 3 (text): Gemma 2's block with per-head-dim q/k norms and a rope per layer type."""

from .base import SPLIT, Family, register_family

register_family("gemma3_text", Family("gemma3_text", SPLIT,
                                      bias_flags={"self_attn.o_proj": {"attention_bias": True}},
                                      gguf_arch="gemma3"))
