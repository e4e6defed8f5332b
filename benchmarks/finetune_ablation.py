"""Claim: one set of adapters, trained with sandwich sampling + distillation, recovers every subnet of the space at
once, better than no fine-tuning; ablations show what the shape-aware mixture (SMoL), the loss balancing and the
teacher add over one shared plain LoRA trained the same way.

Methods, same steps / data / seed / sandwich / schedule: (a) none, (b) lora = one shared LoRA of rank
top_k x rank (same active rank per token as SMoL; no router), (c) smol_nobalance, (d) smol, all distilled from the
frozen original model; (e) smol_inplace: the paper's recipe (the largest subnet with adapters learns the data and
teaches the rest).
Subnets: for 80/65/50% of the full model's predicted decode latency (device profile amd-epyc/torch-eager, C=128),
a depth-only (full width, deepest DP depth under the target), a width-only (all layers) and a mixed one (depth halfway
between): the width is the one under the target with the best calibration perplexity (8 x 256 WikiText-2 *valid*
tokens, before fine-tuning), the narrowest if none fits; all built by the shipped DP + FLAP strategy. The DP table
stops at 15 layers, so the 50% depth-only subnet is the 15-layer one, whatever its ratio. Training data: Alpaca seed
tasks (Alpaca template) + the shipped self-generated distillation corpus (no evaluation text); scored on WikiText-2
*test*, ARC-easy validation (all 570 questions: acc, acc_norm, standard errors).
Each training run resumes from its checkpoints and finished evaluations are kept in a partial file, so an
interrupted benchmark continues where it stopped.
Writes benchmarks/results/finetune.json and finetune.md.
"""

from __future__ import annotations

import argparse
import math
import json
import time
from pathlib import Path

from _common import RESULTS, setup

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.data import data_root, read_training_texts
from amoeba_search.finetune.checkpoint import load_adapters
from amoeba_search.finetune.recipe import TrainConfig, Trainer
from amoeba_search.finetune.smol import AdapterConfig
from amoeba_search.models import load_model
from amoeba_search.profiling.store import ProfileStore
from amoeba_search.profiling.predictor import Predictor
from amoeba_search.search.proxies import PROXIES
from amoeba_search.resources import shipped, shipped_strategy
from amoeba_search.selection.space import Candidate, SearchSpace, candidate_subnet
from amoeba_search.selection.strategy import Strategy
from amoeba_search.subnet import ModelDims
from amoeba_search.tasks import TASKS
from amoeba_search.tasks.base import evaluate_tasks

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CORPUS = shipped("adapters") / "smollm2-135m.corpus.jsonl"
TARGETS = (0.8, 0.65, 0.5)
METHODS = ("none", "lora", "smol_nobalance", "smol", "smol_inplace")


def pick_subnets(space: SearchSpace, predictor: Predictor, setting, dims: ModelDims, proxy) -> list[dict]:
    """Depth-only (deepest under the target), width-only and mixed (the width under the target with the best
    calibration proxy, as a search would pick it; WikiText-2 *valid*, never the test split) per target ratio."""
    def ms(c: Candidate) -> float:
        return predictor.predict_ms(setting, c.widths)

    proxy_values: dict[Candidate, float] = {}

    def proxy_ppl(c: Candidate) -> float:
        if c not in proxy_values:
            proxy_values[c] = proxy(c)
        return proxy_values[c]

    full = Candidate(dims.num_layers, max(space.heads), max(space.mlp))
    full_ms = ms(full)
    widths = sorted(((h, m) for h in space.heads for m in space.mlp), key=lambda w: -ms(Candidate(full.depth, *w)))
    picks = []
    for target in TARGETS:
        budget = target * full_ms
        depth_only = max((Candidate(d, full.heads, full.mlp) for d in space.depths
                          if ms(Candidate(d, full.heads, full.mlp)) <= budget), default=None,
                         key=lambda c: c.depth) or Candidate(min(space.depths), full.heads, full.mlp)

        def widest(depth: int) -> Candidate:
            fitting = [Candidate(depth, *w) for w in widths if ms(Candidate(depth, *w)) <= budget]
            return min(fitting, key=proxy_ppl) if fitting else Candidate(depth, *widths[-1])

        mixed_depth = min(space.depths, key=lambda d: abs(d - (full.depth + depth_only.depth) / 2))
        for shape, candidate in (("depth", depth_only), ("width", widest(full.depth)), ("mixed", widest(mixed_depth))):
            picks.append({"target": target, "shape": shape, "subnet": candidate.key, "candidate": candidate,
                          "latency_ratio": round(ms(candidate) / full_ms, 4)})
    return picks


def train(method: str, loaded, strategy, strategy_path, data, out: Path, args) -> dict:
    experts, top_k, rank = (1, 1, args.rank * args.top_k) if method == "lora" else (args.experts, args.top_k, args.rank)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         balance=method != "smol_nobalance", teacher="inplace" if method == "smol_inplace" else "frozen",
                         seed=args.seed, checkpoint_every=25, mixed_precision=args.mixed_precision)
    adapter = AdapterConfig(experts=experts, top_k=top_k, rank=rank, alpha=args.alpha_per_rank * rank)
    trainer = Trainer(loaded, strategy, strategy_path, data, out / method, config, adapter, progress=True)
    record = trainer.train()
    loaded.model.eval()
    return {"seconds": record["seconds"], "steps": record["step"],
            "params_m": sum(p.numel() for p in trainer.adapters.parameters()) / 1e6,
            "final_losses": record["history"][-1]["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha-per-rank", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", default="bf16", help="no or bf16 (1.8x faster steps on this CPU)")
    parser.add_argument("--windows", type=int, default=20, help="WikiText-2 test windows of 512 tokens")
    parser.add_argument("--arc", type=int, default=None, help="ARC-easy validation questions (first N; all 570)")
    parser.add_argument("--shapes", default="depth,mixed", help="subnet shapes per target: depth, width, mixed")
    parser.add_argument("--corpus", type=Path, default=SHIPPED_CORPUS, help="distillation corpus (amoeba corpus)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "finetune_bench")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="re-render finetune.md from finetune.json")
    args = parser.parse_args()
    if args.report_only:
        result = json.loads((args.results / "finetune.json").read_text())
        (args.results / "finetune.md").write_text(markdown(result, result["details"]["subnets"]))
        return
    command = setup(args.threads)

    strategy_path = shipped_strategy()
    strategy = Strategy.load(strategy_path)
    loaded = load_model("default")
    dims = ModelDims.from_config(loaded.model.config)
    root = data_root()
    data_files = [root / "instructions" / "alpaca_seed_tasks.jsonl", args.corpus]
    data = {str(f): read_training_texts(f) for f in data_files}
    space = SearchSpace.from_strategy(strategy, dims)
    lut = ProfileStore().load("amd-epyc", "torch-eager")
    setting = lut.setting("decode")
    calibration = PROXIES.get("ppl")(loaded, root)
    picks = [p for p in pick_subnets(space, Predictor(lut), setting, dims,
                                     lambda c: calibration.score(candidate_subnet(loaded.model, strategy, c)))
             if p["shape"] in args.shapes.split(",")]

    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "evaluations.jsonl"
    done = {(r["subnet"], r["method"]): r for r in map(json.loads, partial.read_text().splitlines())} \
        if partial.exists() else {}
    training = {}
    tasks = [TASKS.get("wikitext2"), TASKS.get("arc_easy")]
    limits = {"wikitext2": args.windows, "arc_easy": args.arc}
    for method in METHODS:
        if method != "none":
            training[method] = train(method, loaded, strategy, strategy_path, data, args.out, args)
            loaded.adapters = load_adapters(loaded, args.out / method)
        else:
            loaded.adapters = None
        for pick in picks:
            if (pick["subnet"], method) in done:
                continue
            began = time.perf_counter()
            subnet = candidate_subnet(loaded.model, strategy, pick["candidate"])
            scores = {task.name: evaluate_tasks(loaded, [task], root, subnet, questions=limits[task.name], windows=limits[task.name],
                                                progress=False)["tasks"][task.name] for task in tasks}
            row = {"subnet": pick["subnet"], "shape": pick["shape"], "target": pick["target"],
                   "latency_ratio": pick["latency_ratio"], "method": method,
                   "wikitext2_test_ppl": round(scores["wikitext2"]["ppl"], 3),
                   **{f"arc_easy_{k}": round(scores["arc_easy"][k], 2)
                      for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")},
                   "eval_seconds": round(time.perf_counter() - began, 1)}
            print(json.dumps(row), flush=True)
            with partial.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            done[(pick["subnet"], method)] = row

    rows = [done[(p["subnet"], m)] for m in METHODS for p in picks]
    result = {"steps": args.steps, "seconds": round(sum(t["seconds"] for t in training.values()), 1),
              "rows": [{k: r[k] for k in ("subnet", "latency_ratio", "method", "wikitext2_test_ppl", "arc_easy_acc",
                                          "arc_easy_acc_stderr", "arc_easy_acc_norm")} for r in rows],
              "details": {"command": command, "environment": environment(), "training": training,
                          "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "subnets": [{k: v for k, v in p.items() if k != "candidate"} for p in picks],
                          "latency": "amd-epyc/torch-eager decode C=128 predictor", "rows": rows}}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "finetune.json", result)
    (args.results / "finetune.md").write_text(markdown(result, picks))
    print(markdown(result, picks))


def markdown(result: dict, picks: list[dict]) -> str:
    rows = result["details"]["rows"]
    by = {(r["subnet"], r["method"]): r for r in rows}
    lines = ["# One-for-all fine-tuning ablation", "",
             f"`{result['details']['command']}`; {result['steps']} steps per method, "
             f"{result['seconds'] / 60:.1f} min of training in all (2 CPU threads).", "",
             "| target | shape | subnet | latency ratio | metric | " + " | ".join(METHODS) + " |",
             "|---|---|---|---|---|" + "---|" * len(METHODS)]
    for p in picks:
        for metric, label in (("wikitext2_test_ppl", "WikiText-2 test ppl"), ("arc_easy_acc", "ARC-e acc %"),
                              ("arc_easy_acc_norm", "ARC-e acc_norm %")):
            values = [by[(p["subnet"], m)][metric] for m in METHODS]
            best = min(values) if metric.endswith("ppl") else max(values)
            cells = [f"**{v}**" if v == best else str(v) for v in values]
            lines.append(f"| {p['target']:.0%} | {p['shape']} | {p['subnet']} | {p['latency_ratio']:.3f} | {label} | "
                         + " | ".join(cells) + " |")
    distinct = list(dict.fromkeys(p["subnet"] for p in picks))
    if len(distinct) < len(picks):
        lines += ["", f"{len(distinct)} distinct subnets (a subnet listed twice is the narrowest full-depth width, "
                  "which is all a width-only subnet can reach at both targets)."]
    lines += ["", f"Mean over the {len(distinct)} subnets (ppl: geometric mean):", "",
              "| metric | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for metric, label in (("wikitext2_test_ppl", "WikiText-2 test ppl"), ("arc_easy_acc", "ARC-e acc %"),
                          ("arc_easy_acc_norm", "ARC-e acc_norm %")):
        if metric.endswith("ppl"):
            means = [math.exp(sum(math.log(by[(n, m)][metric]) for n in distinct) / len(distinct)) for m in METHODS]
        else:
            means = [sum(by[(n, m)][metric] for n in distinct) / len(distinct) for m in METHODS]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    lines.append("")
    for metric, label, better in (("wikitext2_test_ppl", "WikiText-2 test ppl", min), ("arc_easy_acc", "ARC-e", max),
                                  ("arc_easy_acc_norm", "ARC-e acc_norm", max)):
        wins = {m: sum(better(by[(n, m)][metric], by[(n, "none")][metric]) != by[(n, "none")][metric]
                       for n in distinct) for m in METHODS[1:]}
        best = {m: sum(by[(n, m)][metric] == better(by[(n, k)][metric] for k in METHODS) for n in distinct)
                for m in METHODS}
        lines.append(f"- {label}: better than no fine-tuning in " + ", ".join(
            f"{m} {wins[m]}/{len(distinct)}" for m in METHODS[1:]) + "; best of all in " + ", ".join(
            f"{m} {best[m]}" for m in METHODS) + ".")
    errors = [r["arc_easy_acc_stderr"] for r in rows]
    lines.append(f"- ARC-e standard errors are {min(errors):.1f}-{max(errors):.1f} points (lm-eval's sample stderr): "
                 "a difference under ~2 standard errors of the difference (~3 points here) is within noise.")
    lines += ["", "Training per method (wall times are not comparable where other jobs shared the 2 cores): " + "; ".join(
        f"{m}: {t['params_m']:.2f} M params, {t['seconds'] / 60:.1f} min, final losses {t['final_losses']}"
        for m, t in result["details"]["training"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
