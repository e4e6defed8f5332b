"""Calibration data held as model inputs, and a runner that re-runs any layer range from a cached hidden state."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import MCItem
from ..errors import UserError
from ..evaluate import argmax, choice_loglikelihoods, pack_question, packed_inputs, token_logprobs
from ..view import kept_layers


Objective = Callable[[PreTrainedModel, torch.Tensor], float]


def next_token_loss(input_ids: torch.Tensor) -> Objective:
    """Mean next-token NLL over the windows (lower is better)."""

    def objective(model: PreTrainedModel, hidden: torch.Tensor) -> float:
        scored = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return -token_logprobs(model, scored, input_ids[:, 1:].reshape(-1)).double().mean().item()

    return objective


@dataclass
class Calibration:
    """Calibration inputs (S, T), extra forward arguments (packed masks), the objective on final hidden states
    (lower is better), and how the data was drawn, recorded in every strategy file."""

    input_ids: torch.Tensor
    source: dict = field(default_factory=dict)
    forward_kwargs: dict = field(default_factory=dict)
    objective: Objective | None = None

    def __post_init__(self) -> None:
        if self.objective is None:
            self.objective = next_token_loss(self.input_ids)


def text_calibration(tokenizer: PreTrainedTokenizerBase, text: str, samples: int = 16, seq_len: int = 256,
                     seed: int = 0, name: str = "text") -> Calibration:
    """`samples` random non-overlapping windows of `seq_len` tokens (seeded), like FLAP/SliceGPT calibration sets."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    slots = len(ids) // seq_len
    if slots < samples:
        raise UserError(f"{name} has {len(ids)} tokens: not enough for {samples} windows of {seq_len}; lower the "
                        "sample count or window length, or use a longer text")
    chosen = sorted(random.Random(seed).sample(range(slots), samples))
    windows = torch.stack([ids[s * seq_len:(s + 1) * seq_len] for s in chosen])
    return Calibration(windows, {"data": name, "metric": "ppl", "samples": samples, "seq_len": seq_len, "seed": seed,
                                 "tokens": samples * seq_len})


def multiple_choice_calibration(tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem], samples: int = 40,
                                seed: int = 0, name: str = "mmlu", dtype: torch.dtype = torch.float32
                                ) -> Calibration:
    """`samples` random questions, packed as in evaluation; objective = -accuracy, ties broken by the gold answer's
    mean NLL (1e-3 weight), since accuracy on a few dozen questions ties often."""
    if len(items) < samples:
        raise UserError(f"{name} has {len(items)} questions, fewer than {samples}: lower the sample count")
    chosen = sorted(random.Random(seed).sample(range(len(items)), samples))
    packed = [pack_question(tokenizer, i, items[i]) for i in chosen]
    inputs = packed_inputs(packed, dtype)
    gold = [items[i].gold for i in chosen]

    def objective(model: PreTrainedModel, hidden: torch.Tensor) -> float:
        sums = choice_loglikelihoods(model, hidden, packed)
        accuracy = sum(argmax(ll) == g for ll, g in zip(sums, gold)) / len(gold)
        gold_nll = -sum(ll[g] for ll, g in zip(sums, gold)) / len(gold)
        return -accuracy + 1e-3 * gold_nll

    return Calibration(inputs.pop("input_ids"), {"data": name, "metric": "mmlu", "samples": samples, "seed": seed,
                                                 "tokens": sum(len(p.tokens) for p in packed)}, inputs, objective)


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
            return self._forward(hidden)

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.base_model(inputs_embeds=hidden, use_cache=False,
                                     **self.calibration.forward_kwargs).last_hidden_state

    @torch.inference_mode()
    def final(self, hidden: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """The final hidden states (after the final norm) when `layers` are applied to `hidden`: (S, T, D)."""
        with kept_layers(self.model, layers):
            return self._forward(hidden)

    @torch.inference_mode()
    def loss(self, hidden: torch.Tensor, layers: Sequence[int]) -> float:
        """The calibration objective after applying `layers`, the final norm and the LM head (lower is better)."""
        return self.calibration.objective(self.model, self.final(hidden, layers))
