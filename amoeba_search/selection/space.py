"""The subnet space of a strategy: a depth from its DP table x a uniform head count x an MLP width, valid by
construction (GQA head counts) and floored so no degenerate subnet is proposed. What a candidate *is* belongs to
selection; which widths a device profile measured is search's business (search.space)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from transformers import PreTrainedModel

from ..errors import UserError
from .strategy import Strategy
from .width import width_subnet
from ..subnet import ModelDims, Subnet


@dataclass(frozen=True, order=True)
class Candidate:
    """One point of the space: kept layer count (layers from the strategy), query heads, MLP channels per layer."""

    depth: int
    heads: int
    mlp: int

    @property
    def key(self) -> str:
        return f"d{self.depth}-h{self.heads}-m{self.mlp}"

    @property
    def widths(self) -> list[tuple[int, int]]:
        return [(self.heads, self.mlp)] * self.depth


@dataclass(frozen=True)
class SearchSpace:
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    mlp: tuple[int, ...]

    @classmethod
    def from_strategy(cls, strategy: Strategy, dims: ModelDims, mlp_steps: int = 8, min_depth: int | None = None,
                      min_heads: int | None = None, min_mlp_ratio: float = 0.25) -> "SearchSpace":
        """The space without a device profile (fine-tuning): MLP widths are multiples of 1/mlp_steps of the full
        width, the grid `amoeba profile` measures by default."""
        mlp = [round(dims.intermediate_size * k / mlp_steps) for k in range(1, mlp_steps + 1)]
        return cls.floored(strategy, dims, dims.head_counts(), mlp, min_depth, min_heads, min_mlp_ratio)

    @classmethod
    def floored(cls, strategy: Strategy, dims: ModelDims, heads: list[int], mlp: list[int], min_depth: int | None,
                min_heads: int | None, min_mlp_ratio: float, max_mlp_options: int | None = None) -> "SearchSpace":
        """Apply the floors to the strategy's depths and the offered widths, refusing an empty result."""
        if strategy.width is None:
            raise UserError("the strategy has no width scores: rerun `amoeba select` with a --width-method")
        floor_depth = max(2, dims.num_layers // 2) if min_depth is None else min_depth
        depths = tuple(d for d in strategy.depths() if d >= floor_depth)
        floor_heads = dims.num_kv_heads if min_heads is None else min_heads
        heads = tuple(h for h in dims.head_counts() if h >= floor_heads and h in heads)
        mlp = sorted({m for m in mlp if m >= min_mlp_ratio * dims.intermediate_size})
        if max_mlp_options and len(mlp) > max_mlp_options:      # evenly spaced subset, always with the full width
            step = (len(mlp) - 1) / (max_mlp_options - 1)
            mlp = sorted({mlp[round(i * step)] for i in range(max_mlp_options)})
        if not depths or not heads or not mlp:
            raise UserError(f"empty search space: depths {depths}, heads {heads}, MLP widths {mlp} after the floors "
                            f"(min depth {floor_depth}, min heads {floor_heads}, min MLP ratio {min_mlp_ratio}); lower "
                            "a floor or profile more widths")
        return cls(depths, heads, tuple(mlp))

    def candidates(self) -> list[Candidate]:
        return [Candidate(d, h, m) for d, h, m in itertools.product(self.depths, self.heads, self.mlp)]

    @property
    def size(self) -> int:
        return len(self.depths) * len(self.heads) * len(self.mlp)

    @property
    def largest(self) -> Candidate:
        return Candidate(max(self.depths), max(self.heads), max(self.mlp))

    @property
    def smallest(self) -> Candidate:
        return Candidate(min(self.depths), min(self.heads), min(self.mlp))

    def to_dict(self) -> dict:
        return {"depths": list(self.depths), "heads": list(self.heads), "mlp": list(self.mlp)}

    @classmethod
    def from_dict(cls, payload: dict) -> "SearchSpace":
        return cls(tuple(payload["depths"]), tuple(payload["heads"]), tuple(payload["mlp"]))


def candidate_subnet(model: PreTrainedModel, strategy: Strategy, candidate: Candidate,
                     compensate: bool = True) -> Subnet:
    """The subnet a candidate stands for: the DP's layers for its depth, FLAP's best heads and channels in each."""
    layers = strategy.layers_for(candidate.depth)
    return width_subnet(model, strategy.width, layers, heads=candidate.heads, mlp=candidate.mlp,
                        compensate=compensate)
