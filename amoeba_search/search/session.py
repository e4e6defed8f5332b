"""One call opens a search, one runs it. The CLI, the demo, the benchmarks and the tests all go through these two,
so a search is assembled (profile, setting, space, proxy, storage) the same way everywhere."""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from ..data import data_root
from ..models import LoadedModel
from ..profiling.store import ProfileStore
from ..runtime import configure
from ..selection.strategy import Strategy
from ..families.base import model_dims
from .proxies import PROXIES
from .space import profiled_space
from . import DEFAULT_STORAGE
from .study import SearchContext, search, search_study_name


@dataclass
class SearchRequest:
    """Plain values (picklable) that define a search; a worker process rebuilds the same search from them."""

    strategy: str
    device: str
    flow: str
    phase: str = "decode"
    model: str = "default"
    proxy: str = "ppl"
    proxy_samples: int | None = None
    storage: str = DEFAULT_STORAGE
    profiles_dir: str | None = None
    data_dir: str | None = None
    tokens: int | None = None
    dtype: str | None = None
    batch: int = 1
    min_depth: int | None = None
    min_heads: int | None = None
    min_mlp_ratio: float = 0.25
    max_mlp_options: int | None = None
    correction: bool = True
    compensate: bool = True
    threads: int | None = None
    adapters: str | None = None
    model_dtype: str = "auto"

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():       # Paths from the CLI become strings (picklable, JSON-able)
            if isinstance(value, Path):
                setattr(self, name, str(value))


def open_search(request: SearchRequest, loaded: LoadedModel | None = None) -> SearchContext:
    """The search context of a request: strategy, the device profile (from the store), its setting, the space the
    profile covers, the accuracy proxy and the storage. `loaded` skips loading the model (and its adapters)."""
    from ..finetune.checkpoint import load_model_and_adapters

    strategy = Strategy.load(request.strategy)
    lut = ProfileStore(request.profiles_dir).load(request.device, request.flow)
    setting = lut.setting(request.phase, request.tokens, request.batch, request.dtype)
    proxy_factory = PROXIES.get(request.proxy)
    if loaded is None:
        loaded = load_model_and_adapters(request.model, request.adapters, request.model_dtype)
    dims = model_dims(loaded.model.config)
    space = profiled_space(strategy, dims, lut, setting, request.min_depth, request.min_heads,
                           request.min_mlp_ratio, request.max_mlp_options)
    extra = {"samples": request.proxy_samples} if request.proxy_samples else {}
    proxy = proxy_factory(loaded, data_root(request.data_dir), **extra)
    return SearchContext(loaded, strategy, lut, setting, space, proxy, request.storage, request.correction,
                         request.compensate, request)


def _worker(request: SearchRequest, target_ms: float, trials: int, sampler: str, seed: int, study_name: str,
            prune_dominated: bool) -> None:
    """Another process on the same study (several machines can do the same with the same storage)."""
    configure(request.threads)
    search(open_search(request), target_ms, trials, sampler, seed, study_name, prune_dominated=prune_dominated)


def run_search(ctx: SearchContext, target_ms: float, trials: int, sampler: str = "tpe", seed: int = 0,
               workers: int = 1, prune_dominated: bool = True, progress: bool = False) -> optuna.Study:
    """Run (or resume) the study for a latency target to `trials` trials in all, with `workers` processes on this
    machine sharing it (the extra ones rebuild the search from its request, so the model must be loadable by
    name or path)."""
    name = search_study_name(ctx, target_ms, sampler, prune_dominated)
    extra = [] if workers <= 1 else [
        multiprocessing.get_context("spawn").Process(
            target=_worker, args=(ctx.request, target_ms, trials, sampler, seed + 1 + i, name, prune_dominated))
        for i in range(workers - 1)]
    for process in extra:
        process.start()
    try:
        return search(ctx, target_ms, trials, sampler, seed, name, progress=progress,
                      prune_dominated=prune_dominated)
    finally:
        for process in extra:
            process.join()
