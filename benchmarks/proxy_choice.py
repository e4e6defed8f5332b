"""Claim: perplexity on held-out text the full model wrote itself (the `self_ppl` proxy) ranks heterogeneous
candidates by held-out ARC-easy accuracy better than WikiText-2 valid perplexity (the `ppl` proxy), so searches
that re-rank the exact solver's candidates by it hand over subnets that keep more of the model's accuracy.

For each latency target, every candidate the heterogeneous search re-ranks (`candidate_pool`: the exact top-k, the
exact optimum with the DP's removal set per depth, the uniform subnets; no refinement round) is run in place with
the shipped adapters on: the `ppl` proxy (8 x 256 WikiText-2 valid tokens, what searches used), the `self_ppl`
proxy (16 x 256 tokens of held-out self-written text), WikiText-2 valid perplexity and KL to the full model on 16
other windows, KL to the full model on the self-written windows, the summed block score, and ARC-easy (all 570
validation questions, per question). Reported per proxy: Spearman correlation with ARC-easy acc over all candidates,
over the odd and the even questions separately (a proxy chosen on one half can be checked on the other), and over
the 15 candidates best on the `ppl` proxy (where a search decides); and the ARC-easy accuracy of the candidate each
proxy picks; the same over the pool's uniform subnets alone (the uniform search's choices, `make demo --space
uniform`'s). ARC-easy here is the reported validation split, so this measures a method choice against the same split
the recovery table reports: read the halves. Rows resume from --out/rows.jsonl. Writes
benchmarks/results/proxy_choice.{json,md}."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from _common import RESULTS, setup
from scipy.stats import spearmanr

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.data import data_root, read_arc, read_text
from amoeba_search.evaluate import mean_stderr_pct, multiple_choice
from amoeba_search.finetune.checkpoint import load_adapters
from amoeba_search.models import load_model
from amoeba_search.resources import shipped_adapters, shipped_strategy
from amoeba_search.search.heterogeneous import block_budget_ms, candidate_pool, latency_scales, solve, solver_table
from amoeba_search.search.proxies import PROXIES
from amoeba_search.search.proxies.self_ppl import held_out_windows
from amoeba_search.search.session import SearchRequest, open_search
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.width import heterogeneous_subnet

ROOT = Path(__file__).resolve().parents[1]
PROXY_FIELDS = {"ppl8": "`ppl` proxy: WikiText-2 valid ppl, 8 x 256 (searches so far)",
                "gen_ppl": "`self_ppl` proxy: held-out self-written text ppl, 16 x 256",
                "wiki_ppl": "WikiText-2 valid ppl, 16 other windows of 256",
                "wiki_kl": "KL(full || subnet) on those WikiText-2 windows",
                "gen_kl": "KL(full || subnet) on the self-written windows",
                "block_score": "summed replace-one-block KL scores (the solver's objective)"}
TOP = 15
UNIFORM = "uniform "                           # the origin of the pool's uniform subnets


@torch.inference_mode()
def log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)      # (samples, seq_len - 1, vocab)


def measure(rows_path: Path, ratios: list[float], top_k: int) -> None:
    """Scores every candidate of every target not yet in rows_path (one JSON line each)."""
    root = data_root()
    full = load_model("default")
    tuned = dataclasses.replace(full, adapters=load_adapters(full, shipped_adapters()))
    ppl_proxy = PROXIES.get("ppl")(tuned, root)
    self_ids = held_out_windows(full, root, 16, 256)           # the `self_ppl` proxy's windows, (16, 256)
    wiki_ids = text_calibration(full.tokenizer, read_text(root / "wikitext2" / "valid.txt"), 16, 256, 2,
                                name="wikitext2 valid").input_ids                    # (16, 256)
    teacher = {"wiki": log_probs(full.model, wiki_ids), "gen": log_probs(full.model, self_ids)}
    arc = read_arc(root / "arc" / "arc_easy_validation.jsonl")
    ctx = open_search(SearchRequest(str(shipped_strategy(blocks=True)), "intel-xeon", "torch-eager", "decode",
                                    data_dir=str(root), storage=f"sqlite:///{rows_path.parent / 'studies.db'}",
                                    adapters=str(shipped_adapters())), tuned)
    done = {(r["ratio"], r["key"]) for r in map(json.loads, rows_path.read_text().splitlines())} \
        if rows_path.exists() else set()
    scores = ctx.strategy.blocks.table("kl", ctx.dims.num_layers)
    table = solver_table(scores)
    block_ms = {(h, m): ctx.lut.block_ms(ctx.setting, h, m) for h, m in ctx.lut.widths(ctx.setting)}
    for ratio in ratios:
        target = ctx.resolve_target(None, ratio)
        budget = block_budget_ms(target, ctx.lut.base_ms(ctx.setting), *latency_scales(ctx))
        pool = candidate_pool(ctx, table, scores, block_ms, budget, target, solve(table, block_ms, budget, top_k))
        for index, (origin, solution, _) in enumerate(pool, 1):
            if (ratio, solution.key) in done:
                continue
            started = time.perf_counter()
            subnet = heterogeneous_subnet(tuned.model, ctx.strategy.width, solution.shapes, ctx.compensate)
            row = {"ratio": ratio, "origin": origin, "key": solution.key, "block_score": solution.score,
                   "layers": len(subnet.layers), "ppl8": ppl_proxy.score(subnet)}
            with tuned.view(subnet) as model:
                for name, ids in (("wiki", wiki_ids), ("gen", self_ids)):
                    student = log_probs(model, ids)
                    row[f"{name}_ppl"] = math.exp(-student.gather(-1, ids[:, 1:, None]).mean().item())
                    row[f"{name}_kl"] = (teacher[name].exp() * (teacher[name] - student)).sum(-1).mean().item()
                    del student
                result = multiple_choice(model, full.tokenizer, arc, progress=False)
            row["arc_correct"], row["arc_norm_correct"] = ([int(c) for c in result[key]]
                                                           for key in ("correct", "correct_norm"))
            row["arc_acc"], row["arc_acc_norm"] = result["acc"], result["acc_norm"]
            row["seconds"] = time.perf_counter() - started
            with rows_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{ratio} {index}/{len(pool)} {origin[:30]:30s} ppl8 {row['ppl8']:.1f} self {row['gen_ppl']:.2f} "
                  f"ARC-e {row['arc_acc']:.1f}", flush=True)


def pct(correct: list[int]) -> float:
    return 100.0 * sum(correct) / len(correct)


def spaces(rows: list[dict]) -> list[tuple[str, float, list[dict]]]:
    """(space, ratio, candidates) per target: the whole pool (heterogeneous), and its uniform subnets alone (the
    uniform search's choices)."""
    out = []
    for ratio in sorted({r["ratio"] for r in rows}, reverse=True):
        group = [r for r in rows if r["ratio"] == ratio]
        uniform = [r for r in group if r["origin"].startswith(UNIFORM)]
        out += [("heterogeneous", ratio, group), ("uniform", ratio, uniform)]
    return out


def summary(rows: list[dict]) -> dict:
    """Per space, target and proxy: rank correlations with ARC-e acc and the candidate the proxy picks."""
    out = {}
    for space, ratio, group in spaces(rows):
        for r in group:
            r["arc_acc_odd"], r["arc_acc_even"] = pct(r["arc_correct"][1::2]), pct(r["arc_correct"][0::2])
        top = sorted(group, key=lambda r: r["ppl8"])[:TOP]
        proxies = {}
        for field in PROXY_FIELDS:
            pick = min(group, key=lambda r: r[field])
            proxies[field] = {
                **{f"spearman_{name}": round(float(spearmanr([r[field] for r in members],
                                                             [r[truth] for r in members])[0]), 3)
                   for name, members, truth in (("all", group, "arc_acc"), ("odd_half", group, "arc_acc_odd"),
                                                ("even_half", group, "arc_acc_even"), (f"top{TOP}", top, "arc_acc"))},
                "pick": {k: pick[k] for k in ("origin", "key", "layers", "arc_acc", "arc_acc_norm", "arc_acc_odd",
                                              "arc_acc_even")},
                "pick_arc_acc_stderr": round(mean_stderr_pct(pick["arc_correct"]), 2)}
        best = max(group, key=lambda r: r["arc_acc"])
        out[f"{space} {ratio}"] = {"space": space, "ratio": ratio, "candidates": len(group),
                                   "arc_acc_range": [min(r["arc_acc"] for r in group), best["arc_acc"]],
                                   "oracle": {k: best[k] for k in ("origin", "key", "layers", "arc_acc")},
                                   "proxies": proxies}
    return out


def markdown(record: dict) -> str:
    lines = ["# Which proxy ranks subnets by held-out accuracy", "", f"`{record['details']['command']}`; "
             f"{record['details']['setup']}", "", "Columns: " + "; ".join(f"`{k}` = {v}"
                                                                          for k, v in PROXY_FIELDS.items()) + ".", ""]
    for group in record["summary"].values():
        lo, hi = group["arc_acc_range"]
        lines += [f"## {group['space']}, {group['ratio']:.0%} of the full model's latency: {group['candidates']} "
                  f"candidates, ARC-e acc "
                  f"{lo:.1f}-{hi:.1f} (best: {group['oracle']['origin']}, {group['oracle']['layers']} layers)", "",
                  f"| proxy | Spearman, all | odd questions | even questions | top {TOP} by `ppl8` | its pick | "
                  "pick's ARC-e acc ± stderr / acc_norm |", "|---|---|---|---|---|---|---|"]
        for field, p in group["proxies"].items():
            pick = p["pick"]
            lines.append(f"| `{field}` | {p['spearman_all']:+.2f} | {p['spearman_odd_half']:+.2f} | "
                         f"{p['spearman_even_half']:+.2f} | {p[f'spearman_top{TOP}']:+.2f} | {pick['origin']}, "
                         f"{pick['layers']} layers | {pick['arc_acc']:.1f} ± {p['pick_arc_acc_stderr']:.1f} / "
                         f"{pick['arc_acc_norm']:.1f} |")
        lines.append("")
    lines += ["Lower is better for every proxy, so a useful one correlates negatively with accuracy. Two picks within "
              "~3 points of ARC-e (2 standard errors of a difference) are within noise."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.8,0.65,0.6", help="latency ratios (comma list); 0.6 is `make demo`'s")
    parser.add_argument("--top-k", type=int, default=8, help="exact solutions in each pool, as the search's default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "proxy_choice")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = setup(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.jsonl"
    measure(rows_path, [float(r) for r in args.targets.split(",")], args.top_k)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    record = {"summary": summary(rows),
              "candidates": [{k: v for k, v in r.items() if not k.endswith("_correct")} for r in rows],
              "details": {"command": command, "environment": environment(), "adapters": str(shipped_adapters()),
                          "setup": "shipped adapters on, intel-xeon/torch-eager decode profile (committed), "
                                   "heterogeneous candidate pool per target, ARC-easy validation (570 questions)"}}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "proxy_choice.json", record)
    (args.results / "proxy_choice.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
