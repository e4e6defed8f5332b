"""`make demo`: the whole pipeline on the embedded SmolLM2-135M: shipped DP strategy with block scores and fine-tuned
adapters -> a quick profile of this machine -> search for a decode latency target on fine-tuned accuracy (by default
per-layer shapes, exact knapsack then re-ranked by the measured proxy) -> extract the subnet with its adapters merged
-> measured latency, held-out accuracy (with standard errors) and greedy answers beside the full model's -> Pareto
plot of the uniform space with the chosen subnet marked. Every artifact is a file under --out. The demo never trains:
the adapters were trained once (see adapters/README.md)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .artifacts import SCHEMA_VERSION, environment, write_json_atomic
from .data import data_root
from .errors import UserError
from .extract import extract
from .finetune.checkpoint import load_adapters
from .models import LoadedModel, load_model
from .plot import pareto_figure, render, render_html
from .profiling.environment import default_device_slug, device_name
from .profiling.load import SPEED_WARN_PCT, speed_changes
from .profiling.harness import StopRule
from .profiling.lut import LookupTable, Setting
from .profiling.profile import DEFAULT_MLP_RATIOS, WidthGrid, build_profile
from .profiling.store import ProfileStore
from .resources import shipped_strategy
from .search.heterogeneous import adapters_warning, heterogeneous_search
from .search.report import best_record, pareto_rows, proxy_detail, write_best
from .search.session import SearchRequest, open_search, run_search
from .search.study import feasible_best, pareto, write_csv
from .selection.space import Candidate
from .selection.strategy import Strategy
from .quality import print_samples, quality_table
from .handover import measure_handover
from .families.base import model_dims

FLOW = "torch-eager"
SPACES = ("heterogeneous", "uniform")


def check_space(space: str) -> None:
    if space not in SPACES:
        raise UserError(f"--space {space!r}: choose {' or '.join(SPACES)}")


def demo_profile(console: Console, full: LoadedModel, out: Path) -> LookupTable:
    """This machine's torch-eager decode profile: the committed one when it was measured on a CPU of this name with
    these settings and its reference kernels run within SPEED_WARN_PCT here (one name can cover several CPU
    generations), else a quick one: every block shape the shipped block scores offer (7 MLP widths x 3 head counts,
    and MLP-only blocks), one pass, ~30 s on 2 cores."""
    device = default_device_slug()
    committed = ProfileStore().find(device, FLOW)
    if (committed / "lut.csv").is_file():
        lut = LookupTable.load(committed)
        env = lut.meta["environment"]
        import torch

        if (lut.meta["model"] == full.fingerprint and env.get("device_name") == device_name()
                and env.get("torch_threads") == torch.get_num_threads() and env.get("torch") == torch.__version__):
            changes = speed_changes(env)
            off = [f"{what} {change_pct:+.0f}%" for what, _, _, change_pct in changes
                   if abs(change_pct) > SPEED_WARN_PCT]
            if changes and not off:
                console.print(f"reusing the committed profile {committed} (measured on this CPU, same threads/torch, "
                              f"reference kernels within {SPEED_WARN_PCT:.0f}%)")
                return lut
            console.print(f"[yellow]the committed profile {committed} was made on a CPU of this name, but "
                          + (f"its reference kernels run differently here ({', '.join(off)})" if off else
                             "it recorded no reference kernels to compare this CPU with") + ": profiling anew[/]")
    dims = model_dims(full.model.config)
    grid = WidthGrid.for_model(dims, DEFAULT_MLP_RATIOS, mlp_only=True)
    console.print(f"profiling this machine ({device_name()}): {FLOW}, decode at C=128, {len(grid.mlp)} MLP widths x "
                  f"{len(grid.heads)} head counts and MLP-only blocks")
    return build_profile(full, out / "device_profiles" / device / FLOW, device, FLOW,
                         [Setting("decode", 128, 1, "float32")], grid, rule=StopRule.quick(), passes=1)


def demo_adapters(console: Console, full: LoadedModel, strategy: Strategy, adapters: Path | None) -> LoadedModel:
    """The model the demo searches and extracts with: the full model's weights (shared, not copied) with the
    given adapters attached, or the plain model when there are none."""
    if adapters is None:
        console.print("[yellow]no adapters: the subnets are not fine-tuned, expect little accuracy left[/]")
        return full
    attached = load_adapters(full, adapters)
    attached.check_strategy(strategy)
    record = attached.record
    console.print(f"adapters {adapters}: {record['adapter']['experts']} LoRA experts of rank "
                  f"{record['adapter']['rank']}, {record['step']} steps, teacher {record['training']['teacher']}")
    return dataclasses.replace(full, adapters=attached)


def run_demo(console: Console, full: LoadedModel, out: Path, target_ratio: float = 0.6, trials: int = 30,
             questions: int = 100, windows: int = 8, data_dir: Path | None = None,
             strategy_path: Path | None = None, adapters: Path | None = None, strict: bool = False,
             space: str = "heterogeneous", proxy: str = "self_ppl") -> dict:
    check_space(space)
    root = data_root(data_dir)
    strategy_path = strategy_path or shipped_strategy(blocks=space == "heterogeneous")
    strategy = Strategy.load(strategy_path)
    strategy.check_model(full.fingerprint)
    console.rule("1. strategy and adapters")
    console.print(f"{strategy_path}: DP depths {strategy.depths()[0]}..{strategy.depths()[-1]}, "
                  f"{strategy.width.method} widths" + (", replace-one-block scores" if strategy.blocks else ""))
    tuned = demo_adapters(console, full, strategy, adapters)
    console.rule("2. profile")
    lut = demo_profile(console, full, out)
    setting = lut.setting("decode")
    console.rule("3. search")
    request = SearchRequest(str(strategy_path), lut.meta["device"], FLOW, "decode", data_dir=str(root),
                            profiles_dir=str(lut.directory.parent.parent), proxy=proxy,
                            storage=f"sqlite:///{out / 'studies.db'}",
                            adapters=None if adapters is None else str(adapters))
    ctx = open_search(request, tuned)
    target = ctx.resolve_target(None, target_ratio)
    console.print(f"target {target_ratio:.0%} of the full model's predicted decode latency = {target:.2f} ms; proxy "
                  f"{ctx.proxy.name}: {ctx.proxy.unit} on {proxy_detail(ctx.proxy.settings)}"
                  + (" with the adapters" if adapters else ""))
    if space == "heterogeneous":
        console.print("per-layer shapes: exact knapsack over the block scores, the best candidates measured on the "
                      "proxy")
        if warning := adapters_warning(tuned):
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        record = heterogeneous_search(ctx, target, progress=True)
        subnet = record.pop("subnet")
        best_path = write_best(ctx, record, out / "best_subnet.json", subnet)
        name, predicted, value = record["candidate"], record["predicted_ms"], record["proxy_value"]
        console.print(f"best: {subnet.summary(ctx.dims)} (from: {record['origin']}), predicted "
                      f"{setting.describe(predicted, 2)}, {ctx.proxy.name} {value:.2f} "
                      f"({len(record['candidates'])} candidates, {ctx.cache.evaluations} measured this run)")
    else:
        console.print(f"uniform shapes: {ctx.space.size} subnets, {trials} Optuna trials")
        study = run_search(ctx, target, trials, progress=True)
        best = feasible_best(study, ctx.proxy)
        if best is None:
            raise UserError(f"no subnet met {target:.2f} ms in {trials} trials")
        best_path = write_best(ctx, best_record(ctx, study, best, target), out / "best_subnet.json")
        candidate = Candidate(best.params["depth"], best.params["heads"], best.params["mlp"])
        subnet, name, predicted, value = ctx.subnet(candidate), candidate.key, ctx.latency_ms(candidate), best.value
        console.print(f"best: {candidate.depth} layers, {candidate.heads} heads, {candidate.mlp} MLP channels: "
                      f"predicted {setting.describe(predicted, 2)}, {ctx.proxy.name} {value:.2f} "
                      f"({ctx.cache.evaluations} accuracy evaluations)")
    console.rule("4. extract and measure")
    checkpoint = extract(ctx.loaded, subnet, out / "best_checkpoint", overwrite=True)   # adapters merged in
    measured = [("full model", full, None, ctx.full_model_ms()),
                (f"searched {name}" + (" + adapters, extracted" if adapters else ", extracted"),
                 load_model(str(checkpoint)), None, predicted)]
    if adapters:                               # what the adapters bought: the same subnet without them
        measured.append((f"searched {name}, not fine-tuned", full, subnet, None))
    rows, load = measure_handover(measured, lut, setting, root, questions, windows, strict=strict, console=console)
    for line in load:
        console.print(f"[yellow]warning:[/] {escape(line)}")
    console.print(quality_table(rows, f"decode latency ({FLOW}, C=128) and held-out quality, measured on this machine",
                                setting))
    print_samples(console, rows)
    console.rule("5. Pareto front")
    front_study = pareto(ctx, trials, progress=True)
    # No depth-only / width-only / drop-last baselines here: ~50 more subnets on the proxy (~4 min on 2 cores);
    # `amoeba pareto` draws them.
    csv = write_csv(out / "pareto.csv", pareto_rows(ctx, front_study, baselines=False, progress=True))
    figure = pareto_figure([csv], [target_ratio], marks=[(f"chosen {name}", predicted, value)])
    figures = render(figure, out / "pareto")
    if importlib.util.find_spec("plotly") is not None:              # the [html] extra `make setup` installs
        figures.append(render_html(figure, out / "pareto.html"))
    record = {"schema_version": SCHEMA_VERSION, "kind": "amoeba_search.demo", "model": full.fingerprint,
              "strategy": str(strategy_path), "profile": str(lut.directory), "target_ratio": target_ratio,
              "target_ms": target, "space": space, "proxy": ctx.proxy.name, "best": name,
              "best_subnet": str(best_path), "adapters": None if adapters is None else str(adapters),
              "load_warnings": load,
              "rows": rows, "environment": environment()}
    write_json_atomic(out / "demo.json", record)
    console.print(escape(f"the same front with the baselines (depth only, width only, drop last layers): `amoeba "
                         f"pareto --device {request.device} --flow {FLOW} --strategy {strategy_path} --profiles-dir "
                         f"{request.profiles_dir} --proxy {ctx.proxy.name} --storage {request.storage}"
                         + (f" --adapters {adapters}`" if adapters else "`")))
    if subnet.uniform_shape(ctx.dims) is None:          # plain from_pretrained cannot hold per-layer widths
        console.print(escape(f"load the checkpoint with amoeba_search.models.load_model('{checkpoint}') or any "
                             f"`amoeba --model {checkpoint}` command; for llama.cpp: `amoeba extract --subnet "
                             f"{best_path} --gguf f16 --out DIR" + (f" --adapters {adapters}`" if adapters else "`")))
    console.print("artifacts:\n" + "\n".join(f"  {label}: {path}" for label, path in (
        ("strategy", strategy_path), ("device profile", lut.directory), ("study storage", out / "studies.db"),
        ("best subnet", best_path), ("extracted checkpoint", checkpoint), ("pareto CSV", csv),
        *(("pareto plot", path) for path in figures if path.suffix != ".svg"), ("record", out / "demo.json"))))
    return record
