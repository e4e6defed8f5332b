"""MMLU zero-shot, validation split, answers ` A`..` D`."""

from ..data import read_mmlu
from .base import register_task

register_task("mmlu", "mmlu/zero_shot_val.jsonl", "acc", read_mmlu)
