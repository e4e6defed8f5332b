"""Claim: a shape per layer, chosen exactly under the latency budget, beats the best uniform subnet: at 80% / 65% /
50% of the full model's decode latency on this CPU (torch-eager and llama.cpp), the heterogeneous subnet (each
layer removed or at its own heads x MLP width, exact MILP top-k on the strategy's replace-one-block scores,
re-ranked by the proxy) has lower WikiText-2 *test* perplexity than the best uniform subnet, with its measured
latency within 5% of the prediction; the solver returns the additive optimum (checked by brute force) in well
under a second. Neither side is fine-tuned.

Best uniform: for every (heads, MLP width) of the profile, the deepest strategy depth under the target (a deeper
subnet of the same width is assumed no worse, as `search --prune-dominated`), the one with the best proxy.
Proxy: WikiText-2 *valid* perplexity, 8 x 256 tokens (seed 1). Every scored row is the extracted checkpoint
loaded back from disk: WikiText-2 test perplexity (first --windows x 512 tokens), ARC-easy / ARC-challenge
validation (all questions), greedy answers; latency measured through the flow (median of 3 passes, p10/p90).
Also: which block score (KL or loss increase) ranks random heterogeneous subnets' real proxy best (Spearman).
Writes benchmarks/results/heterogeneous.json and heterogeneous.md; finished rows resume from --out."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import RESULTS, setup
from recovery import score

from amoeba_search.artifacts import environment, read_json, write_json_atomic
from amoeba_search.data import data_root
from amoeba_search.extract import extract
from amoeba_search.models import load_model
from amoeba_search.profiling.environment import default_device_slug
from amoeba_search.profiling.flows import FLOWS
from amoeba_search.profiling.load import load_warnings
from amoeba_search.profiling.harness import StopRule
from amoeba_search.profiling.profile import measure_model, reference_pairing, summarize_runs
from amoeba_search.search.heterogeneous import block_budget_ms, brute_force, heterogeneous_search, solve
from amoeba_search.search.session import SearchRequest, open_search
from amoeba_search.selection.blocks import REMOVED
from amoeba_search.selection.space import Candidate
from amoeba_search.selection.width import heterogeneous_subnet

ROOT = Path(__file__).resolve().parents[1]
SOLVER_CHECK_RATIOS = (0.5, 0.65, 0.8)           # brute-force budgets, whatever --targets this run re-searches


def best_uniform(ctx, target_ms: float) -> tuple[Candidate, float]:
    """The best proxy among the deepest feasible depth of every width (accuracies cached in the study storage)."""
    space, best = ctx.space, None
    for heads in space.heads:
        for mlp in space.mlp:
            feasible = [d for d in space.depths if ctx.latency_ms(Candidate(d, heads, mlp)) <= target_ms]
            if not feasible:
                continue
            candidate = Candidate(max(feasible), heads, mlp)
            value = ctx.candidate_accuracy(candidate)
            if best is None or value < best[1]:
                best = (candidate, value)
    return best


def handed_over(loaded, subnet, directory: Path):
    """The extracted checkpoint loaded back from disk: what a user of the subnet runs."""
    return load_model(str(extract(loaded, subnet, directory))).model


def time_together(lut, setting, models: dict, passes: int) -> dict[str, dict]:
    """Round-robin passes over the models (the full model among them), so a drifting machine slows them alike and
    the full model's measured / predicted ratio shows how far the machine is from its profile's state; each
    model's passes combined as the profile's rows were (its estimator; `paired`: in turns with its reference)."""
    flow, runs = FLOWS.get(lut.meta["flow"]), {name: [] for name in models}
    pairing = reference_pairing(flow, models["full"], lut, setting)
    for _ in range(passes):
        for name, model in models.items():
            runs[name].append(measure_model(flow, model, setting, StopRule(), pairing.prepared if pairing else None))
    return {name: summarize_runs(timed, lut.estimator, pairing.level_ms if pairing else None)
            for name, timed in runs.items()}


def _full_now(row: dict) -> str:
    """The field the row's drift reads: the full model's plain median for a `paired` row (its measured figure is
    stated at the profile's speed), else its measured figure."""
    return "full_measured_median_ms" if row.get("latency_estimator") == "paired" else "full_measured_ms"


def add_latency(row: dict, ctx, subnets: dict, loaded, passes: int = 3) -> None:
    """Time the full model, the uniform and the heterogeneous checkpoint together; write the row's latency fields:
    each side's measured ms (the profile's estimator), median, p10/p90, the heterogeneous error, and the full
    model's measured vs predicted (`drift_pct`: the machine's state against the profile's, not a predictor error
    of the subnet; for a `paired` profile from the plain median)."""
    with tempfile.TemporaryDirectory() as tmp:
        models = {"full": loaded.model, **{side: handed_over(loaded, subnet, Path(tmp) / side)
                                           for side, subnet in subnets.items()}}
        timed = time_together(ctx.lut, ctx.setting, models, passes)
    for side, latency in timed.items():
        row[f"{side}_measured_ms"] = round(latency["measured_ms"], 3)
        row[f"{side}_measured_median_ms"] = round(latency["median_ms"], 3)
        row[f"{side}_measured_p10_ms"] = round(latency["p10_ms"], 3)
        row[f"{side}_measured_p90_ms"] = round(latency["p90_ms"], 3)
    row["latency_estimator"] = ctx.lut.estimator
    row["latency_passes"] = passes
    row["latency_timed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    row["hetero_latency_error_pct"] = round(
        100 * (row["hetero_predicted_ms"] - row["hetero_measured_ms"]) / row["hetero_measured_ms"], 2)
    row["drift_pct"] = round(100 * (row[_full_now(row)] - row["full_model_ms"]) / row["full_model_ms"], 2)
    # The comparison a uniformly slower (or faster) machine leaves intact: the subnet's share of the full model.
    row["hetero_share_of_full_predicted"] = round(row["hetero_predicted_ms"] / row["full_model_ms"], 4)
    row["hetero_share_of_full_measured"] = round(row["hetero_measured_ms"] / row["full_measured_ms"], 4)


def solver_check(ctx, table: list[dict], target_ratios: list[float]) -> dict:
    """Brute force on the first 8 layers with 5 variants each (real scores and latencies) against the MILP, and
    the MILP's time on all layers x all variants (median of 5 solves)."""
    setting = ctx.setting
    block_ms = {w: ctx.lut.block_ms(setting, *w) for w in ctx.lut.widths(setting)}
    subset = [REMOVED] + sorted(block_ms)[::max(1, len(block_ms) // 4)][:4]
    small = [{v: layer[v] for v in subset if v in layer} for layer in table[:8]]
    full_small = 8 * max(block_ms[v] for v in subset if v != REMOVED)
    matches = []
    for ratio in target_ratios:
        exact = solve(small, block_ms, ratio * full_small)[0]
        reference = brute_force(small, block_ms, ratio * full_small)
        matches.append(abs(exact.score - reference.score) <= 1e-9)
    budget = block_budget_ms(0.65 * ctx.full_model_ms(), ctx.lut.base_ms(setting))
    times = []
    for _ in range(5):
        started = time.perf_counter()
        solve(table, block_ms, budget)
        times.append(time.perf_counter() - started)
    return {"matches_brute_force": all(matches), "brute_force_layers": 8, "brute_force_variants": len(subset),
            "budgets_checked": len(matches), "seconds_30_layers": round(statistics.median(times), 4),
            "variants_per_layer": len(table[0])}


def score_predictiveness(ctx, samples: int, seed: int) -> dict:
    """Spearman correlation between summed block scores and the real proxy of random heterogeneous subnets."""
    from scipy.stats import spearmanr

    rng = random.Random(seed)
    blocks, dims = ctx.strategy.blocks, ctx.dims
    tables = {m: blocks.table(m, dims.num_layers) for m in ("kl", "loss_delta")}
    variants = [v for v in blocks.variants if v == REMOVED or v in set(ctx.lut.widths(ctx.setting))]
    sums, proxies = {"kl": [], "loss_delta": []}, []
    for _ in range(samples):
        removal = rng.uniform(0.05, 0.4)
        shapes = [REMOVED if rng.random() < removal else rng.choice(variants[1:]) for _ in range(dims.num_layers)]
        subnet = heterogeneous_subnet(ctx.loaded.model, ctx.strategy.width, shapes, ctx.compensate)
        proxies.append(ctx.proxy.score(subnet))
        for metric, table in tables.items():
            sums[metric].append(sum(table[i][s] for i, s in enumerate(shapes)))
    return {"samples": samples, **{f"spearman_{m}": round(float(spearmanr(v, proxies).statistic), 3)
                                   for m, v in sums.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", type=Path, default=ROOT / "strategies" / "smollm2-135m.dp-flap-blocks.json")
    parser.add_argument("--device", default=default_device_slug(), help="profile of this machine (decode, both "
                                                                       "flows; default: this machine's name)")
    parser.add_argument("--flows", default="torch-eager,llama.cpp")
    parser.add_argument("--targets", default="0.65,0.8,0.5", help="latency ratios (comma list)")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--metric", default="kl", choices=("kl", "loss_delta"))
    parser.add_argument("--refine-rounds", type=int, default=0, help="local-search rounds from the best (search's "
                                                                      "--refine-rounds)")
    parser.add_argument("--max-changes", type=int, default=4, help="layers one refining round may change")
    parser.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens (first N)")
    parser.add_argument("--random-subnets", type=int, default=16, help="for the score-predictiveness check")
    parser.add_argument("--timing-passes", type=int, default=3, help="round-robin passes over the full model and both "
                                                                     "checkpoints when timing them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "heterogeneous")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--profiles-dir", type=Path, default=None, help="profile root (default: the shipped "
                                                                        "device_profiles/)")
    parser.add_argument("--retime", action="store_true", help="time the finished rows' subnets again (with the full "
                                                              "model, round-robin), keeping their scores")
    parser.add_argument("--research-stale", action="store_true", help="search again the finished rows of --targets "
                                                                      "chosen on another profile than the current one "
                                                                      "(or on one not recorded)")
    args = parser.parse_args()
    command = setup(args.threads)
    root = data_root()
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "rows.jsonl"
    done = {(r["flow"], r["target_ratio"]): r for r in map(json.loads, partial.read_text().splitlines())
            if r.get("device", args.device) == args.device} if partial.exists() else {}
    loaded = load_model("default")
    quality_cache: dict[str, dict] = {}
    rows, solver, predictiveness = [], None, None
    for flow in args.flows.split(","):
        request = SearchRequest(str(args.strategy), args.device, flow, "decode", data_dir=str(root),
                                storage=f"sqlite:///{args.out / 'studies.db'}", profiles_dir=args.profiles_dir)
        ctx = open_search(request, loaded)
        warnings = load_warnings(ctx.lut.meta["environment"])      # this machine now vs this flow's profile
        if solver is None:
            table = ctx.strategy.blocks.table(args.metric, ctx.dims.num_layers)
            solver = solver_check(ctx, table, SOLVER_CHECK_RATIOS)
            print(json.dumps({"solver": solver}), flush=True)
            predictiveness = score_predictiveness(ctx, args.random_subnets, seed=0)
            print(json.dumps({"score_predictiveness": predictiveness}), flush=True)
        for ratio in [float(r) for r in args.targets.split(",")]:
            if (flow, ratio) in done and args.research_stale and \
                    done[(flow, ratio)].get("profile_fingerprint") != ctx.lut.fingerprint:
                print(f"{flow} {ratio:.0%}: chosen on profile {done[(flow, ratio)].get('profile_fingerprint')}, "
                      f"now {ctx.lut.fingerprint}: searching again", flush=True)
                del done[(flow, ratio)]
            if (flow, ratio) in done:
                row = done[(flow, ratio)]
                if args.retime:
                    add_latency(row, ctx, {"uniform": ctx.subnet(Candidate(*(int(part[1:]) for part in
                                                                                  row["uniform_subnet"].split("-")))),
                                           "hetero": heterogeneous_subnet(ctx.loaded.model, ctx.strategy.width,
                                                                          [tuple(s) for s in row["hetero_shapes"]],
                                                                          ctx.compensate)}, loaded,
                                args.timing_passes)
                    row.update(retime_command=command, load_warnings=warnings)
                    print(json.dumps({"retimed": {k: v for k, v in row.items() if k.endswith("_ms") or
                                                  k.endswith("_pct")}}), flush=True)
                rows.append(row)
                continue
            target = ratio * ctx.full_model_ms()
            candidate, uniform_proxy = best_uniform(ctx, target)
            hetero = heterogeneous_search(ctx, target, args.top_k, args.metric, args.refine_rounds,
                                          args.max_changes, progress=True)
            row = {"device": args.device, "flow": flow, "target_ratio": ratio, "target_ms": round(target, 3),
                   "full_model_ms": round(ctx.full_model_ms(), 3), "uniform_subnet": candidate.key,
                   "uniform_proxy_ppl": round(uniform_proxy, 3),
                   "uniform_predicted_ms": round(ctx.latency_ms(candidate), 3), "hetero_subnet": hetero["key"],
                   "hetero_layers": len(hetero["subnet"].layers), "hetero_shapes": hetero["shapes"],
                   "hetero_proxy_ppl": round(hetero["proxy_value"], 3),
                   "hetero_predicted_ms": round(hetero["predicted_ms"], 3),
                   "hetero_block_score": round(hetero["block_score"], 4), "solver_seconds": hetero["solver_seconds"],
                   "hetero_origin": hetero["origin"], "refine_rounds": args.refine_rounds,
                   "profile_fingerprint": ctx.lut.fingerprint,
                   "profile_layers_per_row": ctx.lut.meta["design"]["layers_per_row"],
                   "max_changes": args.max_changes, "command": command, "load_warnings": warnings}
            subnets = {"uniform": ctx.subnet(candidate), "hetero": hetero["subnet"]}
            for side, key in (("uniform", candidate.key), ("hetero", hetero["key"])):
                if key not in quality_cache:                       # once per subnet, shared by the flows
                    with tempfile.TemporaryDirectory() as tmp:
                        model = load_model(str(extract(loaded, subnets[side], Path(tmp) / "ckpt")))
                        quality_cache[key] = score(model, root, args.windows)
                scores = quality_cache[key]
                row[f"{side}_test_ppl"] = scores["wikitext2_test_ppl"]
                for name in ("arc_easy", "arc_challenge"):
                    row[f"{side}_{name}_acc"] = scores[f"{name}_acc"]
                    row[f"{side}_{name}_acc_stderr"] = scores[f"{name}_acc_stderr"]
                    row[f"{side}_{name}_acc_norm"] = scores[f"{name}_acc_norm"]
                row[f"{side}_generation"] = scores["generation"]
            add_latency(row, ctx, subnets, loaded, args.timing_passes)
            row["ppl_ratio"] = round(row["hetero_test_ppl"] / row["uniform_test_ppl"], 3)
            print(json.dumps({k: v for k, v in row.items() if "generation" not in k and k != "hetero_shapes"}),
                  flush=True)
            with partial.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            rows.append(row)
    handled = {row_key(r, args.device) for r in rows}
    if args.retime or args.research_stale:                # the re-timed / re-searched rows replace the finished ones
        others = [r for r in map(json.loads, partial.read_text().splitlines())
                  if row_key(r, args.device) not in handled]
        partial.with_suffix(".tmp").write_text("".join(json.dumps(r) + "\n" for r in others + rows))
        partial.with_suffix(".tmp").replace(partial)
    existing_path = args.results / "heterogeneous.json"
    existing = read_json(existing_path, "results", "") if existing_path.is_file() else {}
    old = existing.get("details", {})
    kept = []                                             # rows of other devices, flows or targets: not run now
    for r in existing.get("rows", []):
        r.setdefault("device", old.get("device", ""))     # rows written before rows named their device
        r.setdefault("command", old.get("commands", {}).get(r["flow"], old.get("command", "")))
        if row_key(r, args.device) not in handled:
            kept.append(r)
    record = {"rows": kept + rows, "solver": solver, "score_predictiveness": predictiveness,
              "details": {"command": command, "environment": environment(), "device": args.device,
                          "profiles_dir": str(args.profiles_dir or "device_profiles"),
                          "strategy": str(args.strategy.relative_to(ROOT) if args.strategy.is_relative_to(ROOT)
                                          else args.strategy), "metric": args.metric, "top_k": args.top_k,
                          "proxy": "WikiText-2 valid perplexity (8 x 256 tokens, seed 1)",
                          "test": f"WikiText-2 test, first {args.windows} x 512-token windows",
                          # warnings of runs before they were kept per row: not attributable to one row
                          "unattributed_load_warnings": sorted(
                              set(old.get("load_warnings", [])) | set(old.get("unattributed_load_warnings", [])))
                          if any("load_warnings" not in r for r in kept) else []}}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "heterogeneous.json", record)
    (args.results / "heterogeneous.md").write_text(markdown(record))
    print(markdown(record))


def row_key(row: dict, device: str) -> tuple[str, str, float]:
    """A result row's identity: the device profile it was searched and timed on, the flow, the target."""
    return row.get("device", device), row["flow"], row["target_ratio"]


def _mc(r: dict, side: str, name: str) -> str:
    return f"{r[f'{side}_{name}_acc']:.1f} ± {r[f'{side}_{name}_acc_stderr']:.1f}"


def markdown(record: dict) -> str:
    d, solver, pred = record["details"], record["solver"], record["score_predictiveness"]
    lines = ["# Heterogeneous vs uniform subnets (no fine-tuning)", "",
             f"Strategy `{d['strategy']}` (block metric {d['metric']}, exact top-{d['top_k']} "
             f"re-ranked by the proxy); each row searched and timed on its device's profile (the machine the "
             f"benchmark ran on), decode C=128; each row's command is under 'Shapes chosen'. Proxy: "
             f"{d['proxy']}. Test: {d['test']}. ARC: acc ± stderr in %, full validation sets (chance 25%).", "",
             "| device | flow | target | uniform subnet | uniform test ppl | hetero layers | hetero test ppl | ppl ratio | "
             "hetero predicted ms | hetero measured ms (p10-p90) | error % | uniform measured ms | full model "
             "predicted / measured ms (drift %) | hetero share of full, predicted / measured | ARC-e uni / het | ARC-c uni / het |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['device']} | {r['flow']} | {r['target_ratio']:.0%} ({r['target_ms']:.2f} ms) | {r['uniform_subnet']} | "
                     f"{r['uniform_test_ppl']:.2f} | {r['hetero_layers']} | {r['hetero_test_ppl']:.2f} | "
                     f"{r['ppl_ratio']:.3f} | {r['hetero_predicted_ms']:.2f} | {r['hetero_measured_ms']:.2f} "
                     f"({r['hetero_measured_p10_ms']:.2f}-{r['hetero_measured_p90_ms']:.2f}) | "
                     f"{r['hetero_latency_error_pct']:+.1f} | {r['uniform_measured_ms']:.2f} | "
                     + (f"{r['full_model_ms']:.2f} / {r[_full_now(r)]:.2f} ({r['drift_pct']:+.1f}) | "
                        if "drift_pct" in r else "not timed | ") +
                     (f"{r['hetero_share_of_full_predicted']:.3f} / {r['hetero_share_of_full_measured']:.3f} | "
                      if "hetero_share_of_full_measured" in r else "not recorded | ") +
                     f"{_mc(r, 'uniform', 'arc_easy')} / {_mc(r, 'hetero', 'arc_easy')} | "
                     f"{_mc(r, 'uniform', 'arc_challenge')} / {_mc(r, 'hetero', 'arc_challenge')} |")
    lines += ["", f"Solver (top-1: Pareto-frontier DP; top-k: MILP): optimum equals brute force on {solver['brute_force_layers']} layers x "
                  f"{solver['brute_force_variants']} variants for {solver['budgets_checked']} budgets: "
                  f"{solver['matches_brute_force']}; 30 layers x {solver['variants_per_layer']} variants solved in "
                  f"{solver['seconds_30_layers']:.3f} s (median of 5).",
              f"Score predictiveness (Spearman of summed score vs real proxy ppl over {pred['samples']} random "
              f"heterogeneous subnets): KL {pred['spearman_kl']}, loss increase {pred['spearman_loss_delta']}.",
              "Measured ms: passes (3 unless the row says otherwise) combined as each profile combines its own (median of the passes' medians, "
              "`quiet`: the lowest p10 over the passes, or `paired`: timed in turns with the profile's reference "
              "model and stated at its level), the full model and both checkpoints timed round-robin "
              "in the same passes: drift = the full model's measured (for `paired`: its plain median) vs predicted "
              "latency, how far the machine is "
              "from the state its profile was measured in (a drift well beyond 5% makes the subnets' errors "
              "about the machine, not the predictor); " + ", ".join(sorted(
                  {f"{r['flow']} {r.get('latency_estimator', 'median')}" for r in record["rows"]})) + ".",
              "", "Load warnings while measuring (this machine vs the row's profile): " + ("; ".join(
                  f"{r['device']} {r['flow']} {r['target_ratio']:.0%}: {w}" for r in record["rows"]
                  for w in r.get("load_warnings", [])) or "none") + (
                  "; earlier runs, before warnings were kept per row: " + "; ".join(d["unattributed_load_warnings"])
                  if d.get("unattributed_load_warnings") else ""), "",
              "## Shapes chosen (per original layer: heads/MLP, x = removed)", ""]
    for r in record["rows"]:
        shapes = ",".join("x" if s == [0, 0] else f"{s[0]}/{s[1]}" for s in r["hetero_shapes"])
        found = f" (found by: {r['hetero_origin']}; refining rounds allowed: {r.get('refine_rounds', 0)})" \
            if "hetero_origin" in r else ""
        profile = (f"profile {r['profile_fingerprint']}, {r['profile_layers_per_row']}-block rows"
                   if "profile_fingerprint" in r else "profile not recorded (rows before 2026-12-06 16:00)")
        run = (f"; command `{r['command']}`" if r.get("command") else "") + \
            (f"; re-timed by `{r['retime_command']}`" if r.get("retime_command") else "")
        timed = (f"; timed {r['latency_timed']}" + (f" ({r['latency_passes']} passes)" if "latency_passes" in r else "")
                 if r.get("latency_timed") else "")
        lines.append(f"- {r['device']} {r['flow']} {r['target_ratio']:.0%}: {shapes}{found}; {profile}{run}{timed}")
    lines += ["", "## Greedy answers of the heterogeneous subnets", ""]
    for r in record["rows"]:
        lines.append(f"- {r['device']} {r['flow']} {r['target_ratio']:.0%}: " + " | ".join(
            f"{g['prompt']!r} -> {g['text']!r}" for g in r["hetero_generation"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
