"""Perplexity on seeded random windows of WikiText-2 *valid* (report held-out numbers on the test split)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...data import read_text, require_file
from ...errors import UserError
from ...models import LoadedModel
from ...selection.calibration import text_calibration
from ...subnet import Subnet
from . import PROXIES
from .base import Proxy


@PROXIES.register("ppl")
def perplexity_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 8, seq_len: int = 256,
                     seed: int = 1) -> Proxy:
    """Perplexity of `samples` seeded windows of `seq_len` tokens of WikiText-2 valid; lower is better."""
    if samples < 1 or seq_len < 2:
        raise UserError(f"--proxy-samples must be >= 1 (got {samples}) and the window >= 2 tokens")
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
