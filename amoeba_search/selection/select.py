"""`amoeba select`: run a registered depth selector on calibration data and write the strategy file."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import environment
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
    store = _open_cache(cache_path, cache_header or {})
    with open(cache_path, "a") as handle:
        def append(key: str, value: float) -> None:
            handle.write(json.dumps({"removed": key, "loss": value}) + "\n")
            handle.flush()

        return dp_select(runner.num_layers, max_removed, cached(scorer, store, append), protected, progress)


def _open_cache(path: Path, header: dict) -> dict[str, float]:
    """Load evaluated states from a JSONL cache whose first line must match this run's settings."""
    if not path.exists() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"header": header}) + "\n")
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        first = json.loads(lines[0])
    except (UnicodeDecodeError, json.JSONDecodeError, IndexError):
        raise UserError(f"cache {path} is not a DP cache (its first line is not a JSON header): delete it or pass "
                        "another --cache") from None
    if not isinstance(first, dict) or first.get("header") != header:
        raise UserError(f"cache {path} was written for other settings (model, calibration or metric): "
                        "delete it or pass another --cache")
    store = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            store[str(row["removed"])] = float(row["loss"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut off by an interruption; that state is simply evaluated again
    return store


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
                                   "metric": "calibration_loss", "protected": sorted(protected)}}
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
                    metadata={"environment": environment()})
