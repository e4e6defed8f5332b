"""Qwen2 / Qwen2.5: q/k/v carry biases (sliced with their heads / groups); o_proj and down_proj are hard-coded
without bias (no compensation)."""

from .base import SPLIT, Family, register_family

register_family("qwen2", Family("qwen2", SPLIT, gguf_arch="qwen2"))
