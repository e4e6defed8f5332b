"""Dynamic-programming layer removal (AmoebaLLM): d[n][m] = best calibration score of the first n layers with m removed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from tqdm.auto import tqdm

from .calibration import LayerRunner

Removed = frozenset[int]


class DepthScorer(Protocol):
    """Scores the network with `removed` layers skipped (lower is better); layers < boundary are already decided."""

    def __call__(self, removed: Removed, boundary: int) -> float: ...


@dataclass
class DepthTable:
    """For every removal count m: the kept layers and their calibration score."""

    kept: dict[int, list[int]]
    score: dict[int, float]
    evaluations: int
    seconds: float


def dp_select(num_layers: int, max_removed: int, scorer: DepthScorer, protected: frozenset[int] = frozenset(),
              progress: bool = True) -> DepthTable:
    """Fill d[n][m] layer by layer: keeping layer n-1 inherits d[n-1][m]'s score (same network), removing it costs
    one measured evaluation of d[n-1][m-1]'s removals plus layer n-1. Exact when the score is additive over layers;
    a heuristic otherwise (scores interact)."""
    start = time.perf_counter()
    # states[m] = (removed set, score) for the first n decided layers; the empty removal is the full model.
    states: dict[int, tuple[Removed, float]] = {0: (frozenset(), scorer(frozenset(), 0))}
    evaluations = 1
    removable = [i for i in range(num_layers) if i not in protected]
    max_removed = min(max_removed, len(removable))
    with tqdm(total=sum(min(len([r for r in removable if r <= n]), max_removed) for n in range(num_layers)),
              desc="DP layer selection", unit="eval", disable=not progress) as bar:
        for layer in range(num_layers):
            if layer in protected:
                continue
            updated = dict(states)
            for m in range(1, max_removed + 1):
                if m - 1 not in states:
                    continue
                candidate = states[m - 1][0] | {layer}
                value = scorer(candidate, layer + 1)
                evaluations += 1
                bar.update(1)
                # Strictly better replaces; on a tie the earlier (keep) decision stays, as in the reference DP.
                if m not in states or value < states[m][1]:
                    updated[m] = (candidate, value)
            states = updated
    return DepthTable(kept={m: [i for i in range(num_layers) if i not in removed] for m, (removed, _) in states.items()},
                      score={m: value for m, (_, value) in states.items()}, evaluations=evaluations,
                      seconds=time.perf_counter() - start)


class PrefixCachedLoss:
    """Calibration loss with hidden-state reuse: the prefix up to the DP boundary is memoized per removal set."""

    def __init__(self, runner: LayerRunner) -> None:
        self.runner = runner
        self._prefix: dict[tuple[Removed, int], torch.Tensor] = {}
        self._boundary = 0

    def __call__(self, removed: Removed, boundary: int) -> float:
        if boundary > self._boundary:
            # The DP never looks back more than two layers (a kept state's prefix is extended from the step
            # before): drop older prefixes to bound memory.
            self._prefix = {k: v for k, v in self._prefix.items() if k[1] >= boundary - 2}
            self._boundary = boundary
        hidden = self.hidden_before(frozenset(i for i in removed if i < boundary), boundary)
        suffix = [i for i in range(boundary, self.runner.num_layers) if i not in removed]
        return self.runner.loss(hidden, suffix)

    def hidden_before(self, removed: Removed, layer: int) -> torch.Tensor:
        """Hidden state entering `layer` when the layers in `removed` (all < layer) are skipped."""
        key = (removed, layer)
        if key not in self._prefix:
            if layer == 0:
                self._prefix[key] = self.runner.embed()
            else:
                previous = self.hidden_before(removed - {layer - 1}, layer - 1)
                skipped = layer - 1 in removed
                self._prefix[key] = previous if skipped else self.runner.run(previous, [layer - 1])
        return self._prefix[key]


def cached(scorer: DepthScorer, store: dict[str, float], on_new: Callable[[str, float], None]) -> DepthScorer:
    """Wrap a scorer with a persistent cache keyed by the removed layers, so an interrupted run resumes."""

    def score(removed: Removed, boundary: int) -> float:
        key = ",".join(map(str, sorted(removed)))
        if key not in store:
            store[key] = scorer(removed, boundary)
            on_new(key, store[key])
        return store[key]

    return score
