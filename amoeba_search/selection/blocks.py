"""Replace-one-block scores for heterogeneous subnets (Puzzle's blockwise library): for every layer x variant
(the layer removed, or kept at a head count x MLP width with FLAP's choice of heads/channels and compensation),
how far the otherwise full model moves when only that block is replaced: the KL divergence of its next-token
distribution from the full model's, and the increase of its calibration loss. Summed over layers they are an
additive estimate of a heterogeneous subnet's damage, which an exact solver can optimise under a latency budget.

Each variant costs one pass over the layers after it (the hidden state entering every layer is computed once from
the full model), and results are appended to a JSONL log as they come, so an interrupted run resumes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..artifacts import ResultLog
from ..errors import UserError
from ..evaluate import HEAD_CHUNK, head_logprobs
from ..models import LoadedModel
from ..subnet import ModelDims, Subnet
from ..view import decoder_layers, subnet_view
from ..families.base import family_of, model_dims
from .calibration import Calibration, LayerRunner
from .strategy import REMOVED, BlockScores, Strategy, WidthScores
from .width import layer_choice



def block_variants(dims: ModelDims, mlp_widths: Sequence[int], heads: Sequence[int] | None = None,
                   mlp_only: bool = True) -> list[tuple[int, int]]:
    """Every (query heads, MLP channels) a layer may take: removed, a valid head count (all, or those given) x an
    offered width, and (mlp_only) attention-free layers (0 heads) at each width. Attention-only layers (0 MLP
    channels) are not offered: llama.cpp cannot run them (its deci architecture drops an FFN-free layer whole)."""
    valid = dims.head_counts()
    bad = [h for h in heads or () if h not in valid]
    if bad:
        raise UserError(f"--heads {bad} not valid for this model (allowed: {valid})")
    widths = sorted(set(mlp_widths))
    return [REMOVED] + ([(0, m) for m in widths] if mlp_only else []) + [
        (h, m) for h in (sorted(set(heads)) if heads else valid) for m in widths]


def _variant_subnet(model, width: WidthScores, dims: ModelDims, layer: int, heads: int, mlp: int,
                    compensate: bool) -> Subnet:
    """The full model with only `layer` narrowed to (heads, mlp): every other layer whole (zero compensation)."""
    family = family_of(model.config)
    chosen = layer_choice(decoder_layers(model)[layer], width, layer, heads, mlp, dims, family, compensate)
    full_heads, full_channels = tuple(range(dims.num_heads)), tuple(range(dims.intermediate_size))
    zeros = ((0.0,) * dims.hidden_size,) * 2
    layers = range(dims.num_layers)
    return Subnet(tuple(layers), tuple(chosen[0] if i == layer else full_heads for i in layers),
                  tuple(chosen[1] if i == layer else full_channels for i in layers),
                  tuple(chosen[2] if i == layer else zeros for i in layers) if compensate else None)


class _Divergence:
    """KL(full || other) and NLL of final hidden states against the full model's cached next-token log-probs."""

    def __init__(self, model, final_hidden: torch.Tensor, input_ids: torch.Tensor) -> None:
        self.model = model
        self.targets = input_ids[:, 1:].reshape(-1)                                  # (N,)
        hidden = final_hidden[:, :-1].reshape(-1, final_hidden.shape[-1])            # (N, D)
        self.reference = torch.cat([head_logprobs(model, hidden[s:s + HEAD_CHUNK])
                                    for s in range(0, len(hidden), HEAD_CHUNK)])    # (N, V)
        self.base_loss = -self.reference.gather(1, self.targets[:, None]).double().mean().item()

    def __call__(self, final_hidden: torch.Tensor) -> tuple[float, float]:
        hidden = final_hidden[:, :-1].reshape(-1, final_hidden.shape[-1])
        kl = nll = 0.0
        for s in range(0, len(hidden), HEAD_CHUNK):
            logprobs = head_logprobs(self.model, hidden[s:s + HEAD_CHUNK])          # (n, V)
            reference = self.reference[s:s + HEAD_CHUNK]
            kl += (reference.exp() * (reference - logprobs)).sum().double().item()
            nll -= logprobs.gather(1, self.targets[s:s + HEAD_CHUNK, None]).double().sum().item()
        count = len(hidden)
        return kl / count, nll / count - self.base_loss


@torch.inference_mode()
def score_blocks(loaded: LoadedModel, strategy: Strategy, calibration: Calibration, mlp_widths: Sequence[int],
                 log_path: Path | None = None, compensate: bool = True, progress: bool = True,
                 heads: Sequence[int] | None = None, mlp_only: bool = True) -> BlockScores:
    """Replace-one-block KL and loss increase for every layer x variant, resumed from `log_path` when given."""
    if strategy.width is None:
        raise UserError("the strategy has no width scores: rerun `amoeba select` with a --width-method")
    if calibration.forward_kwargs:
        raise UserError("block scores need a text calibration set (next-token windows), not a packed one")
    model = loaded.model
    dims = model_dims(model.config)
    strategy.width.check(dims)
    variants = block_variants(dims, mlp_widths, heads, mlp_only)
    family = family_of(model.config)
    if family.head_pruning_refusal:
        variants = [v for v in variants if v == REMOVED or v[0] == dims.num_heads]
    full = (dims.num_heads, dims.intermediate_size)
    # Rows are keyed by (layer, variant), so a rerun offering more variants reuses every row already computed.
    header = {"model": loaded.fingerprint, "strategy": strategy.fingerprint, "calibration": calibration.source,
              "compensate": compensate, "dtype": loaded.dtype_name}
    log = ResultLog(log_path, header, "block-score log", "delete it or pass another --log") if log_path else None
    done = {(r["layer"], r["heads"], r["mlp"]): r for r in (log.rows if log else [])
            if {"layer", "heads", "mlp", "kl", "loss_delta"} <= set(r)}
    started = time.perf_counter()
    runner = LayerRunner(model, calibration)
    entering = [runner.embed()]                                   # hidden state entering layer i: (S, T, D)
    for i in range(dims.num_layers):
        entering.append(runner.run(entering[-1], [i]))
    divergence = _Divergence(model, runner.final(entering[0], list(range(dims.num_layers))), calibration.input_ids)
    todo = [(i, v) for i in range(dims.num_layers) for v in variants if v != full and (i, *v) not in done]
    rows = [{"layer": i, "heads": full[0], "mlp": full[1], "kl": 0.0, "loss_delta": 0.0}
            for i in range(dims.num_layers)] if full in variants else []
    for i, (heads, mlp) in tqdm(todo, desc="block scores", unit="variant", disable=not progress):
        suffix = list(range(i + 1, dims.num_layers))
        if (heads, mlp) == REMOVED:
            final = runner.final(entering[i], suffix)
        else:
            with subnet_view(model, _variant_subnet(model, strategy.width, dims, i, heads, mlp, compensate)):
                final = runner.final(entering[i], [i] + suffix)
        kl, loss_delta = divergence(final)
        row = {"layer": i, "heads": heads, "mlp": mlp, "kl": kl, "loss_delta": loss_delta}
        done[(i, heads, mlp)] = row
        if log:
            log.append(row)
    rows += [done[(i, *v)] for i in range(dims.num_layers) for v in variants if v != full]
    return BlockScores(calibration.source, divergence.base_loss, compensate, variants,
                       sorted(rows, key=lambda r: (r["layer"], r["heads"], r["mlp"])),
                       round(time.perf_counter() - started, 1))
