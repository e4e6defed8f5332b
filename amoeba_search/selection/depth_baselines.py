"""Depth baselines in the DP's interface, so comparisons are apples to apples: same calibration, same output table."""

from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

from . import DEPTH_SELECTORS
from .calibration import LayerRunner
from .depth_dp import DepthTable, PrefixCachedLoss


def _table_from_ranking(num_layers: int, ranking: list[int], max_removed: int, started: float,
                        evaluations: int) -> DepthTable:
    """Remove the first m layers of `ranking` (least important first) for every m."""
    kept = {m: sorted(set(range(num_layers)) - set(ranking[:m])) for m in range(max_removed + 1)}
    return DepthTable(kept=kept, score={}, evaluations=evaluations, seconds=time.perf_counter() - started)


@DEPTH_SELECTORS.register("drop_last")
def drop_last(runner: LayerRunner, max_removed: int, protected: frozenset[int], progress: bool = True) -> DepthTable:
    """Drop the last m layers (the naive early-exit baseline; ignores `protected` by definition)."""
    n = runner.num_layers
    return _table_from_ranking(n, list(range(n - 1, -1, -1)), max_removed, time.perf_counter(), 0)


@DEPTH_SELECTORS.register("shortgpt")
@torch.inference_mode()
def shortgpt(runner: LayerRunner, max_removed: int, protected: frozenset[int], progress: bool = True) -> DepthTable:
    """ShortGPT block influence: 1 - cos(block input, block output) per token, averaged; remove the lowest."""
    started, hidden, influence = time.perf_counter(), runner.embed(), {}
    for layer in tqdm(range(runner.num_layers), desc="block influence", disable=not progress, leave=False):
        out = runner.run(hidden, [layer])
        influence[layer] = 1.0 - torch.nn.functional.cosine_similarity(hidden, out, dim=-1).mean().item()
        hidden = out
    ranking = sorted((i for i in influence if i not in protected), key=influence.get)
    return _table_from_ranking(runner.num_layers, ranking, max_removed, started, 1)


@DEPTH_SELECTORS.register("shortened_ppl")
def shortened_ppl(runner: LayerRunner, max_removed: int, protected: frozenset[int], progress: bool = True
                  ) -> DepthTable:
    """Shortened-LLaMA one-shot PPL importance: calibration loss with each block removed alone; remove the lowest."""
    started, scorer = time.perf_counter(), PrefixCachedLoss(runner)
    candidates = [i for i in range(runner.num_layers) if i not in protected]
    loss = {i: scorer(frozenset({i}), i + 1) for i in tqdm(candidates, desc="one-shot block removal",
                                                             disable=not progress, leave=False)}
    return _table_from_ranking(runner.num_layers, sorted(candidates, key=loss.get), max_removed, started,
                               len(candidates))


@DEPTH_SELECTORS.register("random")
def random_layers(runner: LayerRunner, max_removed: int, protected: frozenset[int], progress: bool = True,
                  seed: int = 0) -> DepthTable:
    """Seeded random removal (one random order per seed); average several seeds when reporting."""
    candidates = [i for i in range(runner.num_layers) if i not in protected]
    random.Random(seed).shuffle(candidates)
    return _table_from_ranking(runner.num_layers, candidates, max_removed, time.perf_counter(), 0)
