"""`amoeba search`, `amoeba pareto`: the most accurate subnet for a device, flow and latency target, and the front."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import (DataDirOption, ModelOption, ProfilesOption, StrategyOption, ThreadsOption, check_output,
                     check_range, console, example, new_app, parse_list, setup, strategy_path)
from ..errors import UserError
from ..profiling.flows import FLOWS
from ..search import DEFAULT_STORAGE
from ..search.proxies import PROXIES

app = new_app("")

# The options every search shares, declared once: `search_options` adds them to a command's signature and hands
# them to it as one dict, which `open_from` turns into the validated SearchRequest.
SHARED_OPTIONS: list[tuple[str, object, object]] = [
    ("strategy", Path, StrategyOption),
    ("device", str, typer.Option(..., "--device", "-d", help="Device profile name (`amoeba flows` lists the "
                                                              "profiles).")),
    ("flow", str, typer.Option(..., "--flow", "-f", help=f"Flow profiled on that device: {FLOWS.choices()}.")),
    ("phase", str, typer.Option("decode", help="prefill (TTFT at P tokens) or decode (per token at C cached "
                                               "tokens).")),
    ("proxy", str, typer.Option("ppl", help=f"Accuracy proxy: {PROXIES.choices()} (ppl: WikiText-2 valid windows; "
                                            "self_ppl: held-out text the full model writes once per machine, ~1 "
                                            "min, then cached; the others: first N validation questions).")),
    ("proxy_samples", Optional[int], typer.Option(None, "--proxy-samples", help="Windows (ppl, default 8; self_ppl, "
                                                                                "16) or questions (multiple choice, "
                                                                                "default 200) the proxy reads.")),
    ("storage", str, typer.Option(DEFAULT_STORAGE, help="Optuna storage: sqlite:///x.db, postgresql://user@host/db, "
                                                        "or journal:PATH. Share it to share studies and accuracy "
                                                        "across workers and machines.")),
    ("tokens", Optional[int], typer.Option(None, help="The profile setting's P (prefill) or C (decode) when it has "
                                                      "several.")),
    ("dtype", Optional[str], typer.Option(None, help="The profile setting's dtype when it has several.")),
    ("batch", int, typer.Option(1, help="The profile setting's batch.")),
    ("model", str, ModelOption),
    ("model_dtype", str, typer.Option("auto", "--model-dtype", help="Load the model in auto (the checkpoint's own "
                                                                     "dtype), float32, bfloat16 or float16 (--dtype "
                                                                     "is the profile setting's).")),
    ("min_depth", Optional[int], typer.Option(None, "--min-depth", help="Fewest layers a subnet keeps (default: "
                                                                        "half the model).")),
    ("min_heads", Optional[int], typer.Option(None, "--min-heads", help="Fewest query heads per layer (default: one "
                                                                        "per KV group).")),
    ("min_mlp_ratio", float, typer.Option(0.25, "--min-mlp-ratio", help="Narrowest MLP as a share of the full "
                                                                         "one.")),
    ("correction", bool, typer.Option(True, help="Use the profile's fitted latency correction if it has one.")),
    ("compensate", bool, typer.Option(True, help="FLAP bias compensation for removed heads/channels (turn off for "
                                                 "model families whose o_proj/down_proj hold no bias).")),
    ("profiles_dir", Optional[Path], ProfilesOption),
    ("data_dir", Optional[Path], DataDirOption),
    ("threads", Optional[int], ThreadsOption),
    ("adapters", Optional[Path], typer.Option(None, "--adapters", help="Fine-tuned SMoL adapters (`amoeba finetune "
                                                                       "--out DIR`): accuracy is measured with them; "
                                                                       "studies and caches apart.")),
]


def search_options(command):
    """Give `command(search: dict, ...)` the shared options as parameters of its own (typer reads the signature)."""
    own = inspect.signature(command, eval_str=True)
    params = [p for p in own.parameters.values() if p.name != "search"] + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, kind, option in SHARED_OPTIONS]

    def run(**values):
        return command(search={name: values.pop(name) for name, _, _ in SHARED_OPTIONS}, **values)

    run.__name__, run.__doc__ = command.__name__, command.__doc__
    run.__signature__ = own.replace(parameters=params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def open_from(options: dict, blocks: bool = False):
    """The search of the shared options, validated before any model, profile or storage is opened."""
    from ..search.session import SearchRequest, open_search
    from ..search.storage import storage_file

    from ..models import torch_dtype

    values = dict(options)
    torch_dtype(values["model_dtype"], "--model-dtype")
    check_range("--proxy-samples", values["proxy_samples"], 1)
    check_range("--min-mlp-ratio", values["min_mlp_ratio"], 0, 1, low_open=True)
    check_range("--min-depth", values["min_depth"], 1)
    check_range("--min-heads", values["min_heads"], 1)
    if values["phase"] not in ("prefill", "decode"):
        raise UserError(f"--phase {values['phase']!r}: choose prefill or decode")
    FLOWS.get(values["flow"])
    PROXIES.get(values["proxy"])
    check_output(storage_file(values["storage"]))
    values["strategy"] = strategy_path(values["strategy"], blocks)
    if not Path(values["strategy"]).is_file():
        raise UserError(f"strategy file {values['strategy']} not found: create one with `amoeba select`")
    with console.status("loading the model, profile and proxy data"):
        return open_search(SearchRequest(**values))


@app.command("search", epilog=example(
    "amoeba search --device amd-epyc --flow torch-eager --target-ratio 0.6 --trials 30 --out best.json",
    "amoeba search --device amd-epyc --flow onnxruntime --target-ms 30 --extract ckpt/best"))
@search_options
def search_command(
    search: dict,
    target_ms: Optional[float] = typer.Option(None, "--target-ms", help="Latency budget in ms (predicted)."),
    target_ratio: Optional[float] = typer.Option(None, "--target-ratio", help="Budget as a fraction of the full "
                                                                              "model's predicted latency, e.g. 0.6."),
    trials: int = typer.Option(40, help="Trials in the study in all (a resumed study runs only the rest)."),
    sampler: str = typer.Option("tpe", help="tpe (with the latency constraint) or random."),
    seed: int = typer.Option(0, help="Sampler seed."),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Worker processes on this machine sharing the study."),
    prune_dominated: bool = typer.Option(True, help="Skip a subnet when a deeper one of the same width also meets "
                                                    "the target (assumes depth never hurts; see README)."),
    out: Path = typer.Option(Path("search/best.json"), "--out", "-o", help="Best subnet spec (+ search summary)."),
    extract_dir: Optional[Path] = typer.Option(None, "--extract", help="Also extract the best subnet here, measure "
                                                                       "its latency (when the profile is this "
                                                                       "machine's), held-out accuracy and greedy "
                                                                       "answers beside the full model's."),
    strict: bool = typer.Option(False, "--strict", help="With --extract: refuse to time on a loaded machine or one "
                                                        "slower/faster than the profile recorded (else a warning)."),
    space: str = typer.Option("uniform", help="uniform: one width for every kept layer (Optuna over depth x heads x "
                                              "MLP). heterogeneous: each layer removed or at its own heads x MLP "
                                              "width, solved exactly from the strategy's block scores (`amoeba "
                                              "blocks`), the top-k re-ranked by the proxy."),
    top_k: int = typer.Option(8, "--top-k", help="heterogeneous: exact solutions re-ranked by the measured proxy."),
    block_metric: str = typer.Option("kl", "--block-metric", help="heterogeneous: block score summed by the solver "
                                                                  "(kl or loss_delta)."),
    refine_rounds: int = typer.Option(0, "--refine-rounds", help="heterogeneous: rounds of local search from the "
                                                                 "best (block scores re-taken around it, at most "
                                                                 "--max-changes layers changed; a few minutes each "
                                                                 "on a CPU for a 30-layer model)."),
    max_changes: int = typer.Option(4, "--max-changes", help="heterogeneous: layers one refining round may change."),
) -> None:
    """Best subnet under a latency target on a device/flow: Optuna TPE with the latency as a constraint, or an
    exact per-layer solve (--space heterogeneous)."""
    setup(search["threads"])
    from ..search.report import best_record, write_best
    from ..search.session import run_search
    from ..search.study import feasible_best, make_sampler

    check_range("--trials", trials, 1)
    check_range("--n-jobs", n_jobs, 1)
    check_range("--target-ms", target_ms, 0, low_open=True)
    check_range("--target-ratio", target_ratio, 0, low_open=True)
    if (target_ms is None) == (target_ratio is None):
        raise UserError("give one of --target-ms or --target-ratio")
    make_sampler(sampler, seed)
    check_range("--top-k", top_k, 1)
    check_range("--refine-rounds", refine_rounds, 0)
    check_range("--max-changes", max_changes, 1)
    if space not in ("uniform", "heterogeneous"):
        raise UserError(f"--space {space!r}: choose uniform or heterogeneous")
    if block_metric not in ("kl", "loss_delta"):
        raise UserError(f"--block-metric {block_metric!r}: choose kl or loss_delta")
    check_output(out)
    check_output(extract_dir, directory=True)
    ctx = open_from(search, blocks=space == "heterogeneous")
    if space == "heterogeneous":
        from ..search.heterogeneous import adapters_warning, heterogeneous_search

        target = target_ms if target_ms is not None else target_ratio * ctx.full_model_ms()
        if warning := adapters_warning(ctx.loaded):
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        console.print(f"solving the per-layer knapsack for {target:.3f} ms, measuring the top {top_k}"
                      + (f", then up to {refine_rounds} refining rounds" if refine_rounds else ""))
        record = heterogeneous_search(ctx, target, top_k, block_metric, refine_rounds, max_changes, progress=True)
        subnet = record.pop("subnet")
        write_best(ctx, record, out, subnet)
        console.print(f"best: {record['candidate']} ({subnet.summary(ctx.dims)}) predicted "
                      f"{ctx.setting.describe(record['predicted_ms'])} (target {target:.3f} ms), {ctx.proxy.name} "
                      f"{record['proxy_value']:.3f} (from: {record['origin']}); exact top-{record['top_k']} in "
                      f"{record['solver_seconds']:.3f} s; wrote {out}")
        _report_extract(ctx, out, extract_dir, search, strict)
        return
    target = ctx.resolve_target(target_ms, target_ratio)
    grid = ctx.space
    console.print(escape(f"searching {grid.size} subnets ({len(grid.depths)} depths x {len(grid.heads)} head "
                         f"counts x {len(grid.mlp)} MLP widths) on {ctx.lut.name} [{ctx.lut.meta['source']}], "
                         f"{ctx.setting.label()}, target {target:.3f} ms, proxy {ctx.proxy.name} "
                         f"({ctx.proxy.direction})" + (f", adapters {search['adapters']}" if search["adapters"]
                                                       else "")))
    study = run_search(ctx, target, trials, sampler, seed, workers=n_jobs, prune_dominated=prune_dominated,
                       progress=True)
    best = feasible_best(study, ctx.proxy)
    if best is None:
        raise UserError(f"no feasible subnet found in {trials} trials: raise --trials or the target")
    record = best_record(ctx, study, best, target)
    write_best(ctx, record, out)
    console.print(f"best: {record['candidate']} predicted {ctx.setting.describe(record['predicted_ms'])} "
                  f"(target {target:.3f} ms), "
                  f"{ctx.proxy.name} {record['proxy_value']:.3f}; {record['trials']} trials, "
                  f"{record['accuracy_evaluations']} accuracy evaluations this run; wrote {out}")
    _report_extract(ctx, out, extract_dir, search, strict)


def _report_extract(ctx, out: Path, extract_dir: Path | None, search: dict, strict: bool) -> None:
    """With --extract: the handed-over checkpoint measured beside the full model; else how to extract."""
    from ..search.report import verify

    if extract_dir is not None:
        from ..quality import print_samples, quality_table

        with console.status(f"extracting to {extract_dir} and measuring it beside the full model"):
            result = verify(ctx, out, extract_dir, search["data_dir"], strict=strict)
        for line in result["load_warnings"]:
            console.print(f"[yellow]warning:[/] {escape(line)}")
        console.print(quality_table(result["rows"], "the extracted subnet beside the full model", ctx.setting))
        print_samples(console, result["rows"])
        console.print(result["summary"])
        start = "" if ctx.loaded.adapters is None else f" --init-from {ctx.loaded.adapters.path}"
        console.print(f"more recovery for this one subnet (same --model and --strategy): `amoeba finetune --subnet "
                      f"{out}{start} --steps 300 --out tuned`, then `amoeba extract --adapters tuned --subnet {out} "
                      "--out ckpt`")
    else:
        console.print(f"extract it with `amoeba extract --subnet {out} --out ckpt/best`")


@app.command("pareto", epilog=example(
    "amoeba pareto --device amd-epyc --flow torch-eager --trials 60",
    "amoeba plot pareto search/pareto-amd-epyc-torch-eager-decode.csv --targets 0.5,0.65,0.8"))
@search_options
def pareto_command(
    search: dict,
    trials: int = typer.Option(60, help="Trials in the study in all (resumable)."),
    sampler: str = typer.Option("nsga2", help="nsga2 or tpe (multi-objective)."),
    seed: int = typer.Option(0, help="Sampler seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV of trials, front and baselines (default: "
                                                                 "search/pareto-DEVICE-FLOW-PHASE.csv)."),
    baselines: bool = typer.Option(True, help="Also evaluate drop-last-k, depth-only and width-only subnets."),
    heterogeneous: Optional[str] = typer.Option(None, "--heterogeneous", help="Also the best heterogeneous subnet "
                                                                             "(exact, from the strategy's block "
                                                                             "scores) at these latency ratios, e.g. "
                                                                             "0.4,0.5,0.6,0.7,0.8,0.9: both spaces' "
                                                                             "fronts on one figure."),
) -> None:
    """Accuracy-latency Pareto front on a device/flow (multi-objective Optuna) + baselines -> CSV for `plot pareto`."""
    setup(search["threads"])
    from ..search.report import pareto_rows
    from ..search.study import make_sampler, pareto, write_csv

    check_range("--trials", trials, 1)
    if sampler not in ("nsga2", "tpe"):
        raise UserError(f"--sampler {sampler!r}: choose nsga2 or tpe")
    make_sampler(sampler, seed, multi_objective=True)
    path = out or Path("search") / f"pareto-{search['device']}-{search['flow']}-{search['phase']}.csv"
    check_output(path)
    ratios = tuple(parse_list(heterogeneous, float, "--heterogeneous")) if heterogeneous else ()
    for ratio in ratios:
        check_range("--heterogeneous", ratio, 0, low_open=True)
    ctx = open_from(search, blocks=bool(ratios))
    study = pareto(ctx, trials, sampler, seed, progress=True)
    rows = pareto_rows(ctx, study, baselines, progress=True, heterogeneous=ratios)
    write_csv(path, rows)
    front = [r for r in rows if r["series"] == "search front"]
    console.print(f"{len(front)} subnets on the front from {trials} trials ({ctx.cache.evaluations} accuracy "
                  f"evaluations this run); wrote {path}; draw with `amoeba plot pareto {path}`")
