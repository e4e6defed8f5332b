"""One inference step of a LLaMA-family model as a pure tensor function (ids, positions, past K/V) -> (logits, K/V),
so compilers and exporters see exactly the prefill or decode computation a deployment runs."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

PHASES = ("prefill", "decode")


class _LayerCache:
    """Stands in for a transformers Cache inside one layer: prepends the past K/V and keeps the result."""

    def __init__(self, past_key: torch.Tensor | None, past_value: torch.Tensor | None) -> None:
        self.past_key, self.past_value = past_key, past_value
        self.key = self.value = None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, **_: object):
        if self.past_key is not None:                        # (B, kv, C, hd) + (B, kv, T, hd) on the sequence axis
            key = torch.cat([self.past_key, key], dim=2)
            value = torch.cat([self.past_value, value], dim=2)
        self.key, self.value = key, value
        return key, value


class KVStep(nn.Module):
    """forward(ids (B,T), positions (B,T), *past) -> (logits of the last token (B,1,V), *present K/V per layer).

    No attention mask: prefill runs causal attention over the prompt, decode (T=1) attends to every cached token;
    batches are unpadded, as in latency benchmarks. The LM head runs on the last token only, as generation does."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        inner = self.model.model
        hidden = inner.embed_tokens(input_ids)                              # (B, T, D)
        rotary = inner.rotary_emb(hidden, position_ids)                     # (cos, sin), each (B, T, hd)
        present = []
        for i, layer in enumerate(inner.layers):
            cache = _LayerCache(past[2 * i], past[2 * i + 1]) if past else _LayerCache(None, None)
            hidden = layer(hidden, attention_mask=None, position_ids=position_ids, cache=cache,
                           position_embeddings=rotary)
            present += [cache.key, cache.value]
        logits = self.model.lm_head(inner.norm(hidden[:, -1:, :]))          # (B, 1, V)
        return (logits, *present)


def step_inputs(model: PreTrainedModel, phase: str, tokens: int, batch: int,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    """Inputs for one step: prefill = `tokens` prompt tokens; decode = 1 new token after `tokens` cached ones."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    new = tokens if phase == "prefill" else 1
    start = 0 if phase == "prefill" else tokens
    ids = torch.randint(0, config.vocab_size, (batch, new), generator=generator).to(device)
    positions = torch.arange(start, start + new).expand(batch, new).to(device)
    if phase == "prefill":
        return ids, positions
    from ..layered import per_layer_heads

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # Per layer: its own KV heads (a heterogeneous subnet), or the (B, 1, C, 1) position marker of an MLP-only layer.
    shapes = [(batch, kv, tokens, head_dim) if kv else (batch, 1, tokens, 1) for kv in per_layer_heads(config)[1]]
    past = [torch.randn(shape, generator=generator).to(device=device, dtype=model.dtype)
            for shape in shapes for _ in range(2)]
    return (ids, positions, *past)
