"""Replace-one-block scores for heterogeneous subnets (Puzzle's blockwise library): for every layer x variant
(the layer removed, or kept at a head count x MLP width with FLAP's choice of heads/channels and compensation),
how far the otherwise full model moves when only that block is replaced: the KL divergence of its next-token
distribution from the full model's, and the increase of its calibration loss. Summed over layers they are an
additive estimate of a heterogeneous subnet's damage, which an exact solver can optimise under a latency budget.

Each variant costs one pass over the layers after it (the hidden state entering every layer is computed once from
the full model), and results are appended to a JSONL log as they come, so an interrupted run resumes. The same
scores taken around a subnet instead of the full model (`scores_around`) let the search refine an answer locally."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..artifacts import ResultLog
from ..errors import UserError
from ..evaluate import HEAD_CHUNK, head_logprobs
from ..models import LoadedModel
from ..subnet import ModelDims
from ..view import subnet_view
from ..families.base import family_of, model_dims
from .calibration import Calibration, LayerRunner
from .strategy import REMOVED, BlockScores, Strategy, WidthScores
from .width import heterogeneous_subnet

Shape = tuple[int, int]                          # (query heads, MLP channels); (0, 0) = layer removed


def shapes_key(shapes: Sequence[Shape]) -> str:
    """Compact, unique name of a heterogeneous subnet: kept-layer count, then each layer's shape (x = removed)."""
    parts = ["x" if tuple(s) == REMOVED else f"{s[0]}/{s[1]}" for s in shapes]
    return f"het{sum(tuple(s) != REMOVED for s in shapes)}:" + ",".join(parts)


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
    divergence = _Divergence(model, runner.final(runner.embed(), list(range(dims.num_layers))),
                             calibration.input_ids)
    todo = [(i, v) for i in range(dims.num_layers) for v in variants if v != full and (i, *v) not in done]
    rows = [{"layer": i, "heads": full[0], "mlp": full[1], "kl": 0.0, "loss_delta": 0.0}
            for i in range(dims.num_layers)] if full in variants else []
    for i, (heads, mlp), final in _replaced(loaded, strategy.width, runner, [full] * dims.num_layers, todo,
                                            compensate, progress):
        kl, loss_delta = divergence(final)
        row = {"layer": i, "heads": heads, "mlp": mlp, "kl": kl, "loss_delta": loss_delta}
        done[(i, heads, mlp)] = row
        if log:
            log.append(row)
    rows += [done[(i, *v)] for i in range(dims.num_layers) for v in variants if v != full]
    return BlockScores(calibration.source, divergence.base_loss, compensate, variants,
                       sorted(rows, key=lambda r: (r["layer"], r["heads"], r["mlp"])),
                       round(time.perf_counter() - started, 1))


def _replaced(loaded: LoadedModel, width: WidthScores, runner: LayerRunner, shapes: Sequence[Shape],
              todo: Sequence[tuple[int, Shape]], compensate: bool, progress: bool
              ) -> Iterator[tuple[int, Shape, torch.Tensor]]:
    """(layer, variant, final hidden states (S, T, D)) of the subnet `shapes` with only that layer replaced by that
    variant, for every (layer, variant) in `todo`. The hidden state entering each original layer under `shapes` is
    computed once, so a variant costs one pass over the layers from it on."""
    if not todo:
        return
    model, memo = loaded.model, {}
    base = heterogeneous_subnet(model, width, shapes, compensate, memo)
    entering, hidden = [], runner.embed()                          # entering[i]: (S, T, D) before original layer i
    with subnet_view(model, base):
        for i in range(len(shapes)):
            entering.append(hidden)
            if i in base.layers:          # inside the view, layers are addressed by their position in the subnet
                hidden = runner.run(hidden, [base.layers.index(i)])
    for i, variant in tqdm(todo, desc="block scores", unit="variant", disable=not progress):
        replaced = heterogeneous_subnet(model, width, [variant if j == i else s for j, s in enumerate(shapes)],
                                        compensate, memo)
        with subnet_view(model, replaced):
            yield i, variant, runner.final(entering[i], [p for p, j in enumerate(replaced.layers) if j >= i])


def neighbours(shape: Shape, offered: Sequence[Shape], mlp_steps: int = 2) -> list[Shape]:
    """The variants near a layer's shape in the offered grid: up to `mlp_steps` narrower/wider MLP widths at its
    head count, one step fewer/more heads (0 heads: MLP-only) at its width, and removal; a removed layer may come
    back MLP-only or with all heads, at any width. Local search scores only these, a quarter of all variants."""
    kept = [v for v in offered if v != REMOVED]
    heads, widths = sorted({h for h, _ in kept}), sorted({m for _, m in kept})
    if tuple(shape) == REMOVED:
        near = [(h, m) for h, m in kept if h in (0, heads[-1])]
    else:
        h, m = shape
        near = [REMOVED] + [(h, widths[j]) for j in range(len(widths)) if 0 < abs(j - widths.index(m)) <= mlp_steps]
        near += [(heads[j], m) for j in (heads.index(h) - 1, heads.index(h) + 1) if 0 <= j < len(heads)]
    return [v for v in near if v in offered]


@torch.inference_mode()
def scores_around(loaded: LoadedModel, width: WidthScores, calibration: Calibration, shapes: Sequence[Shape],
                  variants: Sequence[Sequence[Shape]], metric: str, compensate: bool = True, progress: bool = True
                  ) -> list[dict[Shape, float]]:
    """Replace-one-block scores around a subnet instead of the full model: per layer, variant (of those offered for
    that layer in `variants[i]`) -> how much the metric (kl to the full model, or loss_delta) changes when only
    that layer of `shapes` takes that variant (0 for its own shape). Scores taken around the full model add up
    badly over many changes; taken around a subnet close to the answer they are a local, first-order model of it,
    which an exact solver can improve on (trust region)."""
    model = loaded.model
    runner = LayerRunner(model, calibration)
    divergence = _Divergence(model, runner.final(runner.embed(), list(range(len(shapes)))), calibration.input_ids)
    pick = {"kl": 0, "loss_delta": 1}[metric]
    base_subnet = heterogeneous_subnet(model, width, shapes, compensate)
    with subnet_view(model, base_subnet):
        base = divergence(runner.final(runner.embed(), list(range(len(base_subnet.layers)))))[pick]
    table: list[dict[Shape, float]] = [{tuple(s): 0.0} for s in shapes]
    todo = [(i, tuple(v)) for i, offered in enumerate(variants) for v in offered if tuple(v) != tuple(shapes[i])]
    for i, variant, final in _replaced(loaded, width, runner, shapes, todo, compensate, progress):
        table[i][variant] = divergence(final)[pick] - base
    return table
