"""Gemma 2: LLaMA's projections with pre/post feed-forward norms, sliding and full attention layers
(config.layer_types, remapped by the view), attention and final-logit softcapping; `attention_bias` gives o_proj
a bias, the MLP has none."""

from .base import SPLIT, Family, register_family

register_family("gemma2", Family("gemma2", SPLIT, bias_flags={"self_attn.o_proj": {"attention_bias": True}},
                                 gguf_arch="gemma2"))
