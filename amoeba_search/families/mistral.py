"""Mistral: LLaMA's layout, every projection hard-coded without bias (no compensation)."""

from .base import SPLIT, Family, register_family

register_family("mistral", Family("mistral", SPLIT, gguf_arch="llama"))
