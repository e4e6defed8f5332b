"""Calibration data held as model inputs, and a runner that re-runs any layer range from a cached hidden state."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluate import token_logprobs
from ..view import kept_layers


@dataclass
class Calibration:
    """Token windows for calibration (S, T) plus how they were drawn, recorded in every strategy file."""

    input_ids: torch.Tensor
    source: dict = field(default_factory=dict)


def text_calibration(tokenizer: PreTrainedTokenizerBase, text: str, samples: int = 16, seq_len: int = 256,
                     seed: int = 0, name: str = "text") -> Calibration:
    """`samples` random non-overlapping windows of `seq_len` tokens (seeded), like FLAP/SliceGPT calibration sets."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    slots = len(ids) // seq_len
    if slots < samples:
        raise ValueError(f"{name} has {len(ids)} tokens: not enough for {samples} windows of {seq_len}")
    chosen = sorted(random.Random(seed).sample(range(slots), samples))
    windows = torch.stack([ids[s * seq_len:(s + 1) * seq_len] for s in chosen])
    return Calibration(windows, {"data": name, "samples": samples, "seq_len": seq_len, "seed": seed,
                                 "tokens": samples * seq_len})


@contextlib.contextmanager
def _without_final_norm(model: PreTrainedModel) -> Iterator[None]:
    base = model.base_model
    norm = base.norm
    base.norm = nn.Identity()
    try:
        yield
    finally:
        base.norm = norm


class LayerRunner:
    """Runs chosen decoder layers on calibration hidden states, so shared prefixes are computed once."""

    def __init__(self, model: PreTrainedModel, calibration: Calibration) -> None:
        self.model = model
        self.calibration = calibration
        self.num_layers = model.config.num_hidden_layers

    @torch.inference_mode()
    def embed(self) -> torch.Tensor:
        """Hidden states entering layer 0: (S, T, D)."""
        return self.model.get_input_embeddings()(self.calibration.input_ids)

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """Apply `layers` in order to `hidden` (no final norm): the state a longer prefix would hand on."""
        if not layers:
            return hidden
        with kept_layers(self.model, layers), _without_final_norm(self.model):
            return self.model.base_model(inputs_embeds=hidden, use_cache=False).last_hidden_state

    @torch.inference_mode()
    def loss(self, hidden: torch.Tensor, layers: Sequence[int]) -> float:
        """Mean next-token NLL after applying `layers`, the final norm and the LM head (lower is better)."""
        with kept_layers(self.model, layers):
            out = self.model.base_model(inputs_embeds=hidden, use_cache=False).last_hidden_state
        ids = self.calibration.input_ids
        logprobs = token_logprobs(self.model, out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
        return -logprobs.double().mean().item()
