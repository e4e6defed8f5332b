"""Accuracy on the first N MMLU validation questions (the paper's calibration signal)."""

from __future__ import annotations

from pathlib import Path

from ...data import read_mmlu
from ...models import LoadedModel
from . import PROXIES
from .base import Proxy, multiple_choice_proxy


@PROXIES.register("mmlu")
def mmlu_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 200) -> Proxy:
    """MMLU zero-shot validation accuracy (%) on the first `samples` questions; higher is better."""
    return multiple_choice_proxy("mmlu", "mmlu/zero_shot_val.jsonl", read_mmlu, loaded, data_dir, samples)
