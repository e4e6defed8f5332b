"""Perplexity on seeded random windows of WikiText-2 *valid* (report held-out numbers on the test split)."""

from __future__ import annotations

from pathlib import Path

from ...data import read_text, require_file
from ...errors import UserError
from ...models import LoadedModel
from ...selection.calibration import text_calibration
from . import PROXIES
from .base import Proxy, perplexity_score


@PROXIES.register("ppl")
def perplexity_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 8, seq_len: int = 256,
                     seed: int = 1) -> Proxy:
    """Perplexity of `samples` seeded windows of `seq_len` tokens of WikiText-2 valid; lower is better."""
    if samples < 1 or seq_len < 2:
        raise UserError(f"--proxy-samples must be >= 1 (got {samples}) and the window >= 2 tokens")
    path = require_file(data_dir / "wikitext2" / "valid.txt", "wikitext2_valid")
    calibration = text_calibration(loaded.tokenizer, read_text(path), samples, seq_len, seed, name=str(path))
    return Proxy("ppl", "minimize", "ppl", {"data": "wikitext2/valid.txt", "samples": samples, "seq_len": seq_len,
                                            "seed": seed}, perplexity_score(loaded, calibration.input_ids))
