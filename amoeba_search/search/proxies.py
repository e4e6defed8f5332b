"""Accuracy proxies measured for real on the in-place subnet (no copy): calibration perplexity or multiple-choice
accuracy on a calibration subset. Each says its direction; accuracy does not depend on the device, so one value
per subnet serves every device/flow search."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..data import read_arc, read_mmlu, read_text, require_file
from ..evaluate import multiple_choice
from ..models import LoadedModel
from ..registry import Registry
from ..selection.calibration import text_calibration
from ..subnet import Subnet


@dataclass
class Proxy:
    name: str
    direction: str                               # "minimize" or "maximize"
    unit: str
    settings: dict
    score: Callable[[Subnet], float] = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """Identifies the proxy and its data, so cached values are reused only when they mean the same thing."""
        return hashlib.sha256(json.dumps({"name": self.name, **self.settings}, sort_keys=True).encode()).hexdigest()[:12]

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


PROXIES: Registry[Callable[..., Proxy]] = Registry("accuracy proxy")


@PROXIES.register("ppl")
def perplexity_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 8, seq_len: int = 256,
                     seed: int = 1) -> Proxy:
    """Perplexity on seeded random windows of WikiText-2 *valid* (report held-out numbers on the test split)."""
    path = require_file(data_dir / "wikitext2" / "valid.txt", "wikitext2_valid")
    calibration = text_calibration(loaded.tokenizer, read_text(path), samples, seq_len, seed, name=str(path))
    ids = calibration.input_ids

    @torch.inference_mode()
    def score(subnet: Subnet) -> float:
        with loaded.view(subnet) as model:
            logits = model(input_ids=ids).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return math.exp(loss.item())

    return Proxy("ppl", "minimize", "ppl", {"data": "wikitext2/valid.txt", "samples": samples, "seq_len": seq_len,
                                            "seed": seed}, score)


def _mc_proxy(name: str, relative: str, reader, loaded: LoadedModel, data_dir: Path, samples: int) -> Proxy:
    items = reader(require_file(data_dir / relative, name))[:samples]

    def score(subnet: Subnet) -> float:
        with loaded.view(subnet) as model:
            return multiple_choice(model, loaded.tokenizer, items, progress=False)["acc"]

    return Proxy(name, "maximize", "acc %", {"data": relative, "samples": len(items)}, score)


@PROXIES.register("arc_easy")
def arc_easy_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 200, **_) -> Proxy:
    """Accuracy on the first N ARC-easy validation questions (then report ARC-easy on other data)."""
    return _mc_proxy("arc_easy", "arc/arc_easy_validation.jsonl", read_arc, loaded, data_dir, samples)


@PROXIES.register("mmlu")
def mmlu_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 200, **_) -> Proxy:
    """Accuracy on the first N MMLU validation questions (the paper's calibration signal)."""
    return _mc_proxy("mmlu", "mmlu/zero_shot_val.jsonl", read_mmlu, loaded, data_dir, samples)
