"""The part of the space that needs a device profile: only widths the profile measured are offered."""

from __future__ import annotations

from ..errors import UserError
from ..profiling.lut import LookupTable, Setting
from ..selection.space import SearchSpace
from ..selection.strategy import Strategy
from ..subnet import ModelDims


def profiled_space(strategy: Strategy, dims: ModelDims, lut: LookupTable, setting: Setting,
                   min_depth: int | None = None, min_heads: int | None = None, min_mlp_ratio: float = 0.25,
                   max_mlp_options: int | None = None) -> SearchSpace:
    """Depths the strategy computed (>= min_depth, default half the model), GQA-valid head counts (>= one per
    KV group by default), and the MLP widths the profile measured (>= min_mlp_ratio of the full width)."""
    measured = lut.widths(setting)
    space = SearchSpace.floored(strategy, dims, sorted({h for h, _ in measured}), sorted({m for _, m in measured}),
                                min_depth, min_heads, min_mlp_ratio, max_mlp_options)
    check_profile(space, lut, setting)
    return space


def check_profile(space: SearchSpace, lut: LookupTable, setting: Setting) -> None:
    """Every width the space offers must have been profiled on the device."""
    measured = set(lut.widths(setting))
    missing = [(h, m) for h in space.heads for m in space.mlp if (h, m) not in measured]
    if missing:
        raise UserError(f"profile {lut.name} lacks widths {missing[:4]}{'...' if len(missing) > 4 else ''} for "
                        f"{setting.label()}: profile them or narrow the space")
