"""Width selection: importance of every attention head and MLP channel (FLAP fluctuation, magnitude, Wanda), the
rankings any width ratio is taken from, and FLAP's bias compensation for what is removed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel

from ..errors import UserError
from ..subnet import ModelDims, Subnet, mlp_channel_count
from ..families.base import Family, family_of
from ..view import decoder_layers
from . import WIDTH_SCORERS
from .calibration import Calibration
from .strategy import WidthScores

SIGNIFICANT = 7  # digits kept in the strategy file (float32 precision)


@dataclass
class InputStats:
    """Per-feature statistics of a projection's input over all calibration tokens."""

    mean: torch.Tensor     # (F,)
    var: torch.Tensor      # (F,)  population variance: the "fluctuation"
    l2: torch.Tensor       # (F,)  ||X_f||_2 over tokens (Wanda's activation norm)


@torch.inference_mode()
def collect_input_stats(model: PreTrainedModel, calibration: Calibration) -> list[dict[str, InputStats]]:
    """One forward over the calibration set, recording the inputs of o_proj (per head feature) and down_proj
    (per MLP channel) in every layer."""
    sums: dict[tuple[int, str], list[torch.Tensor]] = {}

    def hook(key):
        def record(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()           # (tokens, F)
            total = sums.setdefault(key, [torch.zeros(x.shape[1], dtype=torch.float64) for _ in range(2)] + [0])
            total[0] += x.sum(0)
            total[1] += (x * x).sum(0)
            total[2] += x.shape[0]
        return record

    family, handles = family_of(model.config), []
    for i, block in enumerate(decoder_layers(model)):
        handles.append(block.get_submodule(family.attention_out).register_forward_pre_hook(hook((i, "attn"))))
        handles.append(block.get_submodule(family.mlp_out).register_forward_pre_hook(hook((i, "mlp"))))
    try:
        model(input_ids=calibration.input_ids, use_cache=False, **calibration.forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    stats: list[dict[str, InputStats]] = [{} for _ in decoder_layers(model)]
    for (i, kind), (total, squares, count) in sums.items():
        mean = total / count
        stats[i][kind] = InputStats(mean=mean, var=(squares / count - mean * mean).clamp_min(0), l2=squares.sqrt())
    return stats


# ---- importance scores: (block, stats, dims, family) -> (head scores (H,), channel scores (I,)); higher = keep ----
Scorer = Callable[[torch.nn.Module, dict[str, InputStats], ModelDims, Family], tuple[torch.Tensor, torch.Tensor]]


def _per_head(feature_scores: torch.Tensor, dims: ModelDims) -> torch.Tensor:
    return feature_scores.view(dims.num_heads, dims.head_dim).sum(-1)


@WIDTH_SCORERS.register("flap")
def flap_scores(block, stats, dims, family):
    """FLAP fluctuation: Var(X_f) * ||W[:, f]||^2 of the output projection reading feature f."""
    o_norm = block.get_submodule(family.attention_out).weight.double().pow(2).sum(0)      # (H*hd,)
    down_norm = block.get_submodule(family.mlp_out).weight.double().pow(2).sum(0)         # (I,)
    return _per_head(stats["attn"].var * o_norm, dims), stats["mlp"].var * down_norm


@WIDTH_SCORERS.register("magnitude")
def magnitude_scores(block, stats, dims, family):
    """Weight magnitude only: L2 norm of every weight that reads or writes the head/channel (query rows and
    o_proj columns per head; gate, up rows and down columns per channel), found through the family's layout."""
    sizes = family.segment_sizes(dims)
    totals = {"heads": torch.zeros(dims.num_heads * dims.head_dim, dtype=torch.float64),
              "channels": torch.zeros(dims.intermediate_size, dtype=torch.float64)}
    for projection in family.projections:
        weight = block.get_submodule(projection.name).weight.double().pow(2)
        for segments, axis in ((projection.rows, 1), (projection.cols, 0)):
            per_feature, offset = weight.sum(axis), 0                  # (rows,) or (cols,)
            for kind in segments:
                count, unit = sizes[kind]
                if kind in totals:
                    totals[kind] += per_feature[offset:offset + count * unit]
                offset += count * unit
    return _per_head(totals["heads"], dims).sqrt(), totals["channels"].sqrt()


@WIDTH_SCORERS.register("wanda")
def wanda_scores(block, stats, dims, family):
    """Wanda, structured: sum_i |W[i, f]| * ||X_f||_2 over the output projection's column f."""
    o = block.get_submodule(family.attention_out).weight.double().abs().sum(0) * stats["attn"].l2
    down = block.get_submodule(family.mlp_out).weight.double().abs().sum(0) * stats["mlp"].l2
    return _per_head(o, dims), down


def _rounded(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.{SIGNIFICANT}g}") for v in values.tolist()]


@torch.inference_mode()
def width_section(model: PreTrainedModel, calibration: Calibration, method: str = "flap") -> WidthScores:
    """Scores for every head and channel of every layer, plus input means for bias compensation."""
    scorer = WIDTH_SCORERS.get(method)
    dims = ModelDims.from_config(model.config)
    stats = collect_input_stats(model, calibration)
    family, heads, channels = family_of(model.config), [], []
    for block, layer_stats in zip(decoder_layers(model), stats):
        head_scores, channel_scores = scorer(block, layer_stats, dims, family)
        heads.append(_rounded(head_scores))
        channels.append(_rounded(channel_scores))
    return WidthScores(method, heads, channels, attn_input_mean=[_rounded(s["attn"].mean) for s in stats],
                       mlp_input_mean=[_rounded(s["mlp"].mean) for s in stats])


def _top(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])


def choose_heads(scores: list[float], count: int, dims: ModelDims) -> tuple[int, ...]:
    """Most important heads, GQA-valid: the best n/G in every group, else the best whole groups."""
    if count not in dims.head_counts():
        raise UserError(f"--heads {count} is not realisable with {dims.num_kv_heads} KV groups of {dims.group_size}: "
                        f"choose one of {dims.head_counts()}")
    size = dims.group_size
    if count % dims.num_kv_heads == 0:
        per_group = count // dims.num_kv_heads
        return tuple(sorted(g * size + h for g in range(dims.num_kv_heads)
                            for h in _top(scores[g * size:(g + 1) * size], per_group)))
    group_scores = [sum(scores[g * size:(g + 1) * size]) for g in range(dims.num_kv_heads)]
    return tuple(g * size + h for g in _top(group_scores, count // size) for h in range(size))


def _channel_counts(width: WidthScores, layers: list[int], total_per_layer: int, allocation: str) -> list[int]:
    """Uniform: the same count in every layer. Adaptive (FLAP): standardise scores across layers, keep the global top."""
    if allocation == "uniform":
        return [total_per_layer] * len(layers)
    if allocation != "adaptive":
        raise UserError(f"--allocation {allocation!r}: choose uniform or adaptive")
    scores = torch.tensor([width.mlp_scores[i] for i in layers], dtype=torch.float64)   # (L, I)
    z = (scores - scores.mean()) / scores.std().clamp_min(1e-12)
    threshold = z.flatten().sort(descending=True).values[total_per_layer * len(layers) - 1]
    return [max(1, int((row >= threshold).sum())) for row in z]


@torch.inference_mode()
def width_subnet(model: PreTrainedModel, width: WidthScores, layers: list[int], heads: int | None = None,
                 mlp: float | None = None, allocation: str = "uniform", compensate: bool = True) -> Subnet:
    """A subnet keeping the most important heads/channels of each kept layer; FLAP bias compensation adds the
    removed features' mean contribution W[:, removed] @ mean[removed] to o_proj / down_proj."""
    dims = ModelDims.from_config(model.config)
    width.check(dims)
    head_count = dims.num_heads if heads is None else heads
    per_layer = mlp_channel_count(dims, mlp)
    counts = _channel_counts(width, layers, per_layer, allocation)
    blocks, family = decoder_layers(model), family_of(model.config)
    choices = [layer_choice(blocks[layer], width, layer, head_count, count, dims, family, compensate)
               for layer, count in zip(layers, counts)]
    return _assembled(dims, layers, choices, compensate)


@torch.inference_mode()
def heterogeneous_subnet(model: PreTrainedModel, width: WidthScores, shapes: Sequence[tuple[int, int]],
                         compensate: bool = True, memo: dict | None = None) -> Subnet:
    """A subnet with its own shape per original layer: shapes[i] = (query heads, MLP channels) of layer i, or
    (0, 0) to remove it; FLAP's most important heads/channels (and compensation) in each kept layer. `memo` keeps
    each (layer, shape)'s choice across calls (scoring builds hundreds of subnets that differ in one layer)."""
    dims = ModelDims.from_config(model.config)
    width.check(dims)
    if len(shapes) != dims.num_layers:
        raise UserError(f"a heterogeneous shape list needs one entry per layer ({dims.num_layers}), got {len(shapes)}")
    blocks, family = decoder_layers(model), family_of(model.config)
    memo = {} if memo is None else memo
    layers = [i for i, shape in enumerate(shapes) if tuple(shape) != (0, 0)]
    for i in layers:
        key = (i, tuple(shapes[i]), compensate)
        if key not in memo:
            memo[key] = layer_choice(blocks[i], width, i, shapes[i][0], shapes[i][1], dims, family, compensate)
    return _assembled(dims, layers, [memo[(i, tuple(shapes[i]), compensate)] for i in layers], compensate)


def layer_choice(block: torch.nn.Module, width: WidthScores, layer: int, head_count: int, channel_count: int,
                 dims: ModelDims, family: Family, compensate: bool) -> tuple[tuple[int, ...], tuple[int, ...], tuple]:
    """One layer's kept heads, kept channels and (o_proj, down_proj) compensation (None without compensation).
    A count of 0 skips that sub-block; it gets no compensation (llama.cpp's attention- or FFN-free layers have
    no place for a constant)."""
    chosen_heads = choose_heads(width.head_scores[layer], head_count, dims) if head_count else ()
    chosen_channels = tuple(_top(width.mlp_scores[layer], mlp_channel_count(dims, channel_count)))
    if not compensate:
        return chosen_heads, chosen_channels, None
    dropped_heads = [h for h in range(dims.num_heads) if h not in chosen_heads] if chosen_heads else []
    dropped_features = [h * dims.head_dim + d for h in dropped_heads for d in range(dims.head_dim)]
    dropped_channels = sorted(set(range(dims.intermediate_size)) - set(chosen_channels)) if chosen_channels else []
    return chosen_heads, chosen_channels, (
        _compensation(block.get_submodule(family.attention_out).weight, width.attn_input_mean[layer],
                      dropped_features),
        _compensation(block.get_submodule(family.mlp_out).weight, width.mlp_input_mean[layer], dropped_channels))


def _assembled(dims: ModelDims, layers: Sequence[int], choices: list[tuple], compensate: bool) -> Subnet:
    """The validated subnet of per-layer choices; compensation only when something was dropped somewhere."""
    kept_heads = tuple(c[0] for c in choices)
    kept_channels = tuple(c[1] for c in choices)
    anything_dropped = any(len(h) < dims.num_heads for h in kept_heads) or any(
        len(c) < dims.intermediate_size for c in kept_channels)
    subnet = Subnet(tuple(layers), kept_heads, kept_channels,
                    tuple(c[2] for c in choices) if compensate and anything_dropped else None)
    subnet.validate(dims)
    return subnet


def _compensation(weight: torch.Tensor, mean: list[float], dropped: list[int]) -> tuple[float, ...]:
    """W[:, dropped] @ mean[dropped]: the expected output of the removed inputs, kept as a bias."""
    if not dropped:
        return (0.0,) * weight.shape[0]
    index = torch.tensor(dropped, device=weight.device)
    means = torch.tensor(mean, dtype=torch.float64, device=weight.device)
    bias = weight.double().index_select(1, index) @ means.index_select(0, index)
    return tuple(_rounded(bias))
