"""`amoeba search`, `amoeba pareto`, `amoeba plot pareto`: find subnets for a device, flow and latency target."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from .cli_profile import ProfilesOption, profiles_root
from .errors import UserError

DEFAULT_STORAGE = "sqlite:///search/studies.db"


@dataclass
class SearchArgs:
    """Plain settings (picklable) from which any worker process rebuilds the same search context."""

    strategy: str
    device: str
    flow: str
    phase: str
    tokens: Optional[int]
    dtype: Optional[str]
    batch: int
    model: str
    proxy: str
    proxy_samples: Optional[int]
    storage: str
    profiles_dir: Optional[str]
    data_dir: Optional[str]
    min_depth: Optional[int]
    min_heads: Optional[int]
    min_mlp_ratio: float
    correction: bool
    threads: Optional[int]
    adapters: Optional[str] = None


def build_context(args: SearchArgs, loaded=None):
    from .cli import _load, _setup
    from .data import data_root
    from .profiling.lut import LookupTable
    from .search.proxies import PROXIES
    from .search.space import SearchSpace
    from .search.study import SearchContext
    from .selection.strategy import Strategy
    from .subnet import ModelDims

    _setup(args.threads)
    strategy = Strategy.load(args.strategy)
    lut = LookupTable.load(profiles_root(Path(args.profiles_dir) if args.profiles_dir else None) / args.device
                           / args.flow)
    setting = lut.setting(args.phase, args.tokens, args.batch, args.dtype)
    loaded = loaded or _load(args.model, Path(args.adapters) if args.adapters else None)
    dims = ModelDims.from_config(loaded.model.config)
    space = SearchSpace.build(strategy, dims, lut, setting, args.min_depth, args.min_heads, args.min_mlp_ratio)
    extra = {"samples": args.proxy_samples} if args.proxy_samples else {}
    proxy = PROXIES.get(args.proxy)(loaded, data_root(args.data_dir), **extra)
    return SearchContext(loaded, strategy, lut, setting, space, proxy, args.storage, args.correction)


def _worker(args: SearchArgs, target_ms: float, trials: int, sampler: str, seed: int, study_name: str,
            prune: bool) -> None:
    """A second process on the same study (spawned by --n-jobs); several machines can do the same by hand."""
    from .search.study import search

    search(build_context(args), target_ms, trials, sampler, seed, study_name, prune_dominated=prune)


StrategyOption = typer.Option(..., "--strategy", help="Strategy JSON from `amoeba select` (DP depths + FLAP widths).")
DeviceOption = typer.Option(..., "--device", "-d", help="Device profile name (device_profiles/<device>/).")
FlowOption = typer.Option(..., "--flow", "-f", help="Flow profiled on that device (torch-eager, roofline, ...).")
PhaseOption = typer.Option("decode", help="prefill (TTFT at P tokens) or decode (per token at C cached tokens).")
StorageOption = typer.Option(DEFAULT_STORAGE, help="Optuna storage: sqlite:///x.db, postgresql://user@host/db, or "
                                                   "journal:PATH. Share it to share studies and accuracy across "
                                                   "workers and machines.")
AdaptersOption = typer.Option(None, "--adapters", help="Fine-tuned SMoL adapters (`amoeba finetune --out DIR`): "
                                                        "accuracy is measured with them, and cached apart.")
ProxyOption = typer.Option("ppl", help="Accuracy proxy: ppl (WikiText-2 valid windows), arc_easy or mmlu "
                                       "(first N validation questions).")


def _args(**kw) -> SearchArgs:
    return SearchArgs(**{k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()})


def search_command(
    strategy: Path = StrategyOption, device: str = DeviceOption, flow: str = FlowOption, phase: str = PhaseOption,
    target_ms: Optional[float] = typer.Option(None, "--target-ms", help="Latency budget in ms (predicted)."),
    target_ratio: Optional[float] = typer.Option(None, "--target-ratio", help="Budget as a fraction of the full "
                                                                              "model's predicted latency, e.g. 0.6."),
    trials: int = typer.Option(40, help="Trials in the study in all (a resumed study runs only the rest)."),
    sampler: str = typer.Option("tpe", help="tpe (with the latency constraint) or random."),
    seed: int = typer.Option(0, help="Sampler seed."),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Worker processes on this machine sharing the study."),
    prune_dominated: bool = typer.Option(True, help="Skip a subnet when a deeper one of the same width also meets "
                                                    "the target (assumes depth never hurts; see README)."),
    proxy: str = ProxyOption,
    proxy_samples: Optional[int] = typer.Option(None, "--proxy-samples", help="Windows (ppl) or questions (MC)."),
    storage: str = StorageOption,
    out: Path = typer.Option(Path("search/best.json"), "--out", "-o", help="Best subnet spec (+ search summary)."),
    extract_dir: Optional[Path] = typer.Option(None, "--extract", help="Also extract the best subnet here, measure "
                                                                       "its latency (when the profile is this "
                                                                       "machine's) and held-out perplexity."),
    tokens: Optional[int] = typer.Option(None, help="Profile setting's P or C when it has several."),
    dtype: Optional[str] = typer.Option(None, help="Profile setting's dtype when it has several."),
    batch: int = typer.Option(1, help="Profile setting's batch."),
    model: str = typer.Option("default", "--model", "-m", help="'default' or a HF checkpoint dir."),
    min_depth: Optional[int] = typer.Option(None, "--min-depth", help="Fewest layers (default: half the model)."),
    min_heads: Optional[int] = typer.Option(None, "--min-heads", help="Fewest heads (default: one per KV group)."),
    min_mlp_ratio: float = typer.Option(0.25, "--min-mlp-ratio", help="Narrowest MLP as a share of the full one."),
    correction: bool = typer.Option(True, help="Use the profile's fitted latency correction if it has one."),
    profiles_dir: Optional[Path] = ProfilesOption,
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: ../shared/data)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    adapters: Optional[Path] = AdaptersOption,
) -> None:
    """Best subnet under a latency target on a device/flow: Optuna TPE with the latency as a constraint."""
    from .cli import console
    from .search.study import feasible_best, search
    from .search.report import best_record, write_best

    if trials < 1 or n_jobs < 1:
        raise UserError("--trials and --n-jobs must be >= 1")
    args = _args(strategy=strategy, device=device, flow=flow, phase=phase, tokens=tokens, dtype=dtype, batch=batch,
                 model=model, proxy=proxy, proxy_samples=proxy_samples, storage=storage, profiles_dir=profiles_dir,
                 data_dir=data_dir, min_depth=min_depth, min_heads=min_heads, min_mlp_ratio=min_mlp_ratio,
                 correction=correction, threads=threads, adapters=adapters)
    ctx = build_context(args)
    target = ctx.resolve_target(target_ms, target_ratio)
    name = ctx.study_name("search", f"/target={target:.4f}/{sampler}")
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_worker, args=(args, target, trials, sampler, seed + 1 + i, name,
                                                         prune_dominated))
               for i in range(n_jobs - 1)]
    for worker in workers:
        worker.start()
    console.print(f"searching {ctx.space.size} subnets ({len(ctx.space.depths)} depths x {len(ctx.space.heads)} "
                  f"head counts x {len(ctx.space.mlp)} MLP widths) on {ctx.lut.name} [{ctx.lut.meta['source']}], "
                  f"{ctx.setting.label()}, target {target:.3f} ms, proxy {ctx.proxy.name} ({ctx.proxy.direction})")
    study = search(ctx, target, trials, sampler, seed, name, progress=True, prune_dominated=prune_dominated)
    for worker in workers:
        worker.join()
    best = feasible_best(study, ctx.proxy)
    if best is None:
        raise UserError(f"no feasible subnet found in {trials} trials: raise --trials or the target")
    record = best_record(ctx, study, best, target)
    write_best(ctx, record, out)
    console.print(f"best: {record['candidate']} predicted {record['predicted_ms']:.3f} ms (target {target:.3f}), "
                  f"{ctx.proxy.name} {record['proxy_value']:.3f}; {record['trials']} trials, "
                  f"{record['accuracy_evaluations']} accuracy evaluations this run; wrote {out}")
    if extract_dir is not None:
        from .search.report import verify

        result = verify(ctx, out, extract_dir, data_dir)
        console.print(result["summary"])
    else:
        console.print(f"extract it with `amoeba extract --subnet {out} --out ckpt/best`")


def pareto_command(
    strategy: Path = StrategyOption, device: str = DeviceOption, flow: str = FlowOption, phase: str = PhaseOption,
    trials: int = typer.Option(60, help="Trials in the study in all (resumable)."),
    sampler: str = typer.Option("nsga2", help="nsga2 or tpe (multi-objective)."),
    seed: int = typer.Option(0), proxy: str = ProxyOption,
    proxy_samples: Optional[int] = typer.Option(None, "--proxy-samples"),
    storage: str = StorageOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV of trials, front and baselines (default: "
                                                                 "search/pareto-<device>-<flow>-<phase>.csv)."),
    baselines: bool = typer.Option(True, help="Also evaluate drop-last-k, depth-only and width-only subnets."),
    tokens: Optional[int] = typer.Option(None), dtype: Optional[str] = typer.Option(None),
    batch: int = typer.Option(1), model: str = typer.Option("default", "--model", "-m"),
    min_depth: Optional[int] = typer.Option(None, "--min-depth"), min_heads: Optional[int] = typer.Option(None,
                                                                                                         "--min-heads"),
    min_mlp_ratio: float = typer.Option(0.25, "--min-mlp-ratio"),
    correction: bool = typer.Option(True), profiles_dir: Optional[Path] = ProfilesOption,
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"), threads: Optional[int] = typer.Option(None),
    adapters: Optional[Path] = AdaptersOption,
) -> None:
    """Accuracy-latency Pareto front on a device/flow (multi-objective Optuna) + baselines -> CSV for `plot pareto`."""
    from .cli import console
    from .search.report import pareto_rows
    from .search.study import pareto, write_csv

    args = _args(strategy=strategy, device=device, flow=flow, phase=phase, tokens=tokens, dtype=dtype, batch=batch,
                 model=model, proxy=proxy, proxy_samples=proxy_samples, storage=storage, profiles_dir=profiles_dir,
                 data_dir=data_dir, min_depth=min_depth, min_heads=min_heads, min_mlp_ratio=min_mlp_ratio,
                 correction=correction, threads=threads, adapters=adapters)
    ctx = build_context(args)
    study = pareto(ctx, trials, sampler, seed, progress=True)
    rows = pareto_rows(ctx, study, baselines)
    path = out or Path("search") / f"pareto-{device}-{flow}-{phase}.csv"
    write_csv(path, rows)
    front = [r for r in rows if r["series"] == "search front"]
    console.print(f"{len(front)} subnets on the front from {trials} trials ({ctx.cache.evaluations} accuracy "
                  f"evaluations this run); wrote {path}; draw with `amoeba plot pareto {path}`")


def plot_pareto(
    files: list[Path] = typer.Argument(..., help="pareto CSVs from `amoeba pareto` (one panel each)."),
    out: Path = typer.Option(Path("search/pareto"), "--out", "-o", help="Output stem (.png and .svg)."),
    targets: Optional[str] = typer.Option(None, help="Latency targets to mark, as ratios of the full model, e.g. "
                                                     "0.5,0.65,0.8."),
) -> None:
    """Pareto fronts (accuracy proxy vs latency) with baselines, one panel per device/flow, PNG + SVG."""
    from .cli import console
    from .plot import pareto_figure, render

    ratios = [float(x) for x in targets.split(",")] if targets else []
    paths = render(pareto_figure(files, ratios), out)
    console.print("wrote " + ", ".join(map(str, paths)))
