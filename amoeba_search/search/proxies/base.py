"""What every accuracy proxy returns: measured for real on the in-place subnet (no copy), with its direction;
accuracy does not depend on the device, so one value per subnet serves every device/flow search."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ...data import MCItem, require_file
from ...errors import UserError
from ...evaluate import multiple_choice
from ...models import LoadedModel
from ...subnet import Subnet


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


def multiple_choice_proxy(name: str, relative: str, reader: Callable[[Path], list[MCItem]], loaded: LoadedModel,
                          data_dir: Path, samples: int) -> Proxy:
    """Accuracy (%) on the first `samples` questions of a multiple-choice file under the data root."""
    if samples < 1:
        raise UserError(f"--proxy-samples must be >= 1, got {samples}")
    items = reader(require_file(data_dir / relative, name))[:samples]

    def score(subnet: Subnet) -> float:
        with loaded.view(subnet) as model:
            return multiple_choice(model, loaded.tokenizer, items, progress=False)["acc"]

    return Proxy(name, "maximize", "acc %", {"data": relative, "samples": len(items)}, score)


def perplexity_score(loaded: LoadedModel, ids: torch.Tensor) -> Callable[[Subnet], float]:
    """Scores a subnet by its perplexity on fixed token windows `ids` (samples, seq_len)."""

    @torch.inference_mode()
    def score(subnet: Subnet) -> float:
        with loaded.view(subnet) as model:
            logits = model(input_ids=ids).logits[:, :-1].float()                # (samples, seq_len - 1, vocab)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return math.exp(loss.item())

    return score
