"""Accuracy on the first N ARC-easy validation questions (then report ARC-easy on other data)."""

from __future__ import annotations

from pathlib import Path

from ...data import read_arc
from ...models import LoadedModel
from . import PROXIES
from .base import Proxy, multiple_choice_proxy


@PROXIES.register("arc_easy")
def arc_easy_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 200) -> Proxy:
    """ARC-easy validation accuracy (%) on the first `samples` questions; higher is better."""
    return multiple_choice_proxy("arc_easy", "arc/arc_easy_validation.jsonl", read_arc, loaded, data_dir, samples)
