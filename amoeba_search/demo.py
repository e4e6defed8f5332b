"""`make demo`: the whole pipeline on the embedded SmolLM2-135M: shipped DP strategy -> a quick profile of this
machine -> search for a decode latency target -> extract -> measured latency and held-out accuracy beside the
full model -> Pareto plot. Every artifact is a file under --out."""

from __future__ import annotations

import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .artifacts import SCHEMA_VERSION, environment, write_json_atomic
from .data import data_root
from .errors import UserError
from .extract import extract
from .models import LoadedModel, load_model
from .plot import pareto_figure, render
from .profiling.environment import default_device_slug, device_name
from .profiling.flows import FLOWS
from .profiling.harness import StopRule
from .profiling.lut import LookupTable, Setting
from .profiling.profile import QUICK_MLP_RATIOS, WidthGrid, build_profile, measure_model
from .profiling.store import ProfileStore
from .resources import shipped_strategy
from .search.report import best_record, pareto_rows, write_best
from .search.session import SearchRequest, open_search, run_search
from .search.study import feasible_best, pareto, write_csv
from .selection.space import Candidate
from .selection.strategy import Strategy
from .subnet import ModelDims
from .tasks import TASKS
from .tasks.base import evaluate_tasks

FLOW = "torch-eager"


def demo_profile(console: Console, full: LoadedModel, out: Path) -> LookupTable:
    """This machine's torch-eager decode profile: the committed one when it was measured here with these
    settings, else a quick one (4 MLP widths, one pass, ~1-2 min)."""
    device = default_device_slug()
    committed = ProfileStore().find(device, FLOW)
    if (committed / "lut.csv").is_file():
        lut = LookupTable.load(committed)
        env = lut.meta["environment"]
        import torch

        if (lut.meta["model"] == full.fingerprint and env.get("device_name") == device_name()
                and env.get("torch_threads") == torch.get_num_threads() and env.get("torch") == torch.__version__):
            console.print(f"reusing the committed profile {committed} (measured on this CPU, same threads/torch)")
            return lut
    dims = ModelDims.from_config(full.model.config)
    console.print(f"profiling this machine ({device_name()}): {FLOW}, decode at C=128, 4 MLP widths x 3 head counts")
    return build_profile(full, out / "device_profiles" / device / FLOW, device, FLOW,
                         [Setting("decode", 128, 1, "float32")], WidthGrid.for_model(dims, QUICK_MLP_RATIOS),
                         rule=StopRule.quick(), passes=1)


def run_demo(console: Console, full: LoadedModel, out: Path, target_ratio: float = 0.6, trials: int = 30,
             questions: int = 100, windows: int = 8, data_dir: Path | None = None,
             strategy_path: Path | None = None) -> dict:
    root = data_root(data_dir)
    strategy_path = strategy_path or shipped_strategy()
    strategy = Strategy.load(strategy_path)
    strategy.check_model(full.fingerprint)
    console.rule("1. strategy")
    console.print(f"{strategy_path}: DP depths {strategy.depths()[0]}..{strategy.depths()[-1]}, "
                  f"{strategy.width.method} widths")
    console.rule("2. profile")
    lut = demo_profile(console, full, out)
    setting = lut.setting("decode")
    console.rule("3. search")
    request = SearchRequest(str(strategy_path), lut.meta["device"], FLOW, "decode", data_dir=str(root),
                            profiles_dir=str(lut.directory.parent.parent),
                            storage=f"sqlite:///{out / 'studies.db'}")
    ctx = open_search(request, full)
    target = ctx.resolve_target(None, target_ratio)
    console.print(f"{ctx.space.size} subnets; target {target_ratio:.0%} of the full model's predicted decode "
                  f"latency = {target:.2f} ms; proxy: perplexity on WikiText-2 valid windows")
    study = run_search(ctx, target, trials, progress=True)
    best = feasible_best(study, ctx.proxy)
    if best is None:
        raise UserError(f"no subnet met {target:.2f} ms in {trials} trials")
    best_path = write_best(ctx, best_record(ctx, study, best, target), out / "best_subnet.json")
    candidate = Candidate(best.params["depth"], best.params["heads"], best.params["mlp"])
    console.print(f"best: {candidate.depth} layers, {candidate.heads} heads, {candidate.mlp} MLP channels: predicted "
                  f"{ctx.latency_ms(candidate):.2f} ms, calibration ppl {best.value:.2f} "
                  f"({ctx.cache.evaluations} accuracy evaluations)")
    console.rule("4. extract and measure")
    checkpoint = extract(full, ctx.subnet(candidate), out / "best_checkpoint", overwrite=True)
    rows = []
    for name, loaded, predicted in (("full model", full, ctx.full_model_ms()),
                                    (f"searched ({candidate.key})", load_model(str(checkpoint)),
                                     ctx.latency_ms(candidate))):
        with console.status(f"{name}: decode latency (3 passes), WikiText-2 test ppl, ARC-easy accuracy"):
            rows.append(measure_row(name, loaded, predicted, setting, root, questions, windows))
    console.print(result_table(rows, windows, questions))
    console.rule("5. Pareto front")
    front_study = pareto(ctx, trials, progress=True)
    csv = write_csv(out / "pareto.csv", pareto_rows(ctx, front_study, progress=True))
    figures = render(pareto_figure([csv], [target_ratio]), out / "pareto")
    record = {"schema_version": SCHEMA_VERSION, "kind": "amoeba_search.demo", "model": full.fingerprint,
              "strategy": str(strategy_path), "profile": str(lut.directory), "target_ratio": target_ratio,
              "target_ms": target, "best": candidate.key, "rows": rows, "environment": environment()}
    write_json_atomic(out / "demo.json", record)
    console.print("artifacts:\n" + "\n".join(f"  {label}: {path}" for label, path in (
        ("strategy", strategy_path), ("device profile", lut.directory), ("study storage", out / "studies.db"),
        ("best subnet", best_path), ("extracted checkpoint", checkpoint), ("pareto CSV", csv),
        ("pareto plot", figures[0]), ("record", out / "demo.json"))))
    return record


def measure_row(name: str, loaded: LoadedModel, predicted_ms: float, setting: Setting, root: Path, questions: int,
                windows: int) -> dict:
    """Real decode latency through the profiled flow (median of 3 passes) and held-out accuracy."""
    latency = statistics.median(measure_model(FLOWS.get(FLOW), loaded.model, setting, StopRule())["median_ms"]
                                for _ in range(3))
    ppl = evaluate_tasks(loaded, [TASKS.get("wikitext2")], root, windows=windows, progress=False)["tasks"]["wikitext2"]
    arc = evaluate_tasks(loaded, [TASKS.get("arc_easy")], root, questions=questions, progress=False)["tasks"]["arc_easy"]
    return {"name": name, "path": str(loaded.path), "layers": loaded.model.config.num_hidden_layers,
            "params_m": sum(p.numel() for p in loaded.model.parameters()) / 1e6, "predicted_ms": predicted_ms,
            "measured_ms": latency, "wikitext2_test_ppl": ppl["ppl"], "arc_easy_acc_pct": arc["acc"]}


def result_table(rows: list[dict], windows: int, questions: int) -> Table:
    table = Table(title=f"decode latency ({FLOW}, C=128) and held-out accuracy, measured on this machine")
    for column in ("model", "params M", "predicted ms", "measured ms", f"WikiText-2 test ppl ({windows}x512)",
                   f"ARC-e acc % ({questions} q)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r["name"], f"{r['params_m']:.1f}", f"{r['predicted_ms']:.2f}", f"{r['measured_ms']:.2f}",
                      f"{r['wikitext2_test_ppl']:.2f}", f"{r['arc_easy_acc_pct']:.1f}")
    return table
