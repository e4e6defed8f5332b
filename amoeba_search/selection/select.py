"""`amoeba select`: run a registered depth selector on calibration data and write the strategy file."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..artifacts import ResultLog, environment
from ..errors import UserError
from ..models import LoadedModel
from . import DEPTH_SELECTORS
from .calibration import Calibration, LayerRunner
from .depth_dp import DepthTable, PrefixCachedLoss, cached, dp_select
from .strategy import DepthRow, DepthSection, Strategy
from .width import width_section


@DEPTH_SELECTORS.register("dp")
def dp(runner: LayerRunner, max_removed: int, protected: frozenset[int], progress: bool = True,
       cache_path: Path | None = None, cache_header: dict | None = None) -> DepthTable:
    """AmoebaLLM's DP on calibration loss, with prefix reuse and an on-disk cache of every evaluated state."""
    scorer = PrefixCachedLoss(runner)
    if cache_path is None:
        return dp_select(runner.num_layers, max_removed, scorer, protected, progress)
    log, store = _open_cache(cache_path, cache_header or {})

    def append(key: str, value: float) -> None:
        log.append({"removed": key, "loss": value})

    return dp_select(runner.num_layers, max_removed, cached(scorer, store, append), protected, progress)


def _open_cache(path: Path, header: dict) -> tuple[ResultLog, dict[str, float]]:
    """The DP's evaluated states from its JSONL log (first line: this run's settings), keyed by removed layers."""
    log = ResultLog(path, header, "DP cache", "delete it or pass another --cache")
    store = {}
    for row in log.rows:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            store[str(row["removed"])] = float(row["loss"])
    return log, store


def select_depth(loaded: LoadedModel, calibration: Calibration, method: str = "dp", max_removed: int = 15,
                 keep_first: int = 0, keep_last: int = 0, cache_path: Path | None = None,
                 progress: bool = True, seed: int = 0, width_method: str | None = "flap",
                 width_calibration: Calibration | None = None) -> Strategy:
    """Kept layers for every depth N..N-max_removed (one depth selector) and head/channel importance (one width
    selector, on the full model); returns the strategy."""
    selector = DEPTH_SELECTORS.get(method)
    num_layers = loaded.model.config.num_hidden_layers
    protected = frozenset(range(keep_first)) | frozenset(range(num_layers - keep_last, num_layers))
    limit = num_layers - max(1, len(protected))  # at least one layer always remains
    if not 0 <= max_removed <= limit:
        raise UserError(f"--max-removed must be in 0..{limit} for a {num_layers}-layer model with "
                        f"{len(protected)} protected layers, got {max_removed}")
    runner = LayerRunner(loaded.model, calibration)
    kwargs: dict = {"seed": seed} if method == "random" else {}
    if method == "dp":
        kwargs = {"cache_path": cache_path,
                  "cache_header": {"model": loaded.fingerprint, "calibration": calibration.source,
                                   "metric": "calibration_loss", "protected": sorted(protected),
                                   "dtype": loaded.dtype_name}}
    table = selector(runner, max_removed, protected, progress=progress, **kwargs)
    rows = [DepthRow(m, num_layers - m, tuple(table.kept[m]), table.score.get(m)) for m in sorted(table.kept)]
    metric = ("calibration_loss: mean next-token NLL" if calibration.source.get("metric", "ppl") == "ppl"
              else "calibration_loss: -accuracy + 1e-3 * gold-answer NLL")
    depth = DepthSection(method, metric + " (lower is better)", rows, max_removed, sorted(protected),
                         table.evaluations, table.seconds, seed if method == "random" else None)
    width = None if width_method is None else width_section(loaded.model, width_calibration or calibration,
                                                             width_method)
    if width is not None:
        width.calibration = (width_calibration or calibration).source
    return Strategy(model=loaded.fingerprint, calibration=calibration.source, depth=depth, width=width,
                    metadata={"environment": environment(), "dtype": loaded.dtype_name})
