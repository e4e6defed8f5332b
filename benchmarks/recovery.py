"""Claim: the shipped adapters make searched subnets of the embedded model usable: at 80% / 65% / 50% of the full
model's torch-eager decode latency on this CPU, the subnet searched on fine-tuned accuracy, with the adapters merged
and extracted, keeps most of the full model's above-chance accuracy, while the full model with adapters stays the
original; beside each, the subnet searched and extracted without fine-tuning.

Every row is the extracted checkpoint loaded back from disk (what a user deploys), scored on held-out data: ARC-easy
and ARC-challenge validation (all questions; acc, acc_norm, lm-eval standard errors), WikiText-2 *test* perplexity,
and greedy answers to the fixed prompts. Searches use the shipped strategy, this machine's committed torch-eager
profile (--device) and an accuracy proxy (--proxy: WikiText-2 *valid* perplexity, or self_ppl, perplexity on
held-out text the full model wrote; with the adapters when method = adapters); with
--space heterogeneous, the exact block solver's top-k re-ranked by that proxy, then --refine-rounds local rounds
(`amoeba search --space heterogeneous`). Studies are kept under --out, so a rerun resumes. Retained above-chance
accuracy = (acc - 25) / (acc_full - 25). Writes benchmarks/results/recovery.json and recovery.md; a run with
candidate adapters that were not shipped is kept as written in results/recovery-2000-more-steps/, and the run searched
with the `ppl` proxy (before benchmarks/proxy_choice.py measured `self_ppl` ranking better) in
results/recovery-ppl-proxy/ (--results)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, setup

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.data import data_root
from amoeba_search.evaluate import decode_outcomes, retained_ratio
from amoeba_search.extract import extract
from amoeba_search.finetune.checkpoint import load_adapters
from amoeba_search.models import load_model
from amoeba_search.profiling.store import ProfileStore
from amoeba_search.quality import quality
from amoeba_search.resources import shipped_adapters, shipped_strategy
from amoeba_search.search.heterogeneous import heterogeneous_search
from amoeba_search.search.session import SearchRequest, open_search, run_search
from amoeba_search.search.study import feasible_best
from amoeba_search.selection.space import Candidate
from amoeba_search.selection.strategy import Strategy
from amoeba_search.selection.width import heterogeneous_subnet
from amoeba_search.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = ("arc_easy", "arc_challenge", "wikitext2")
CHANCE_PCT = 25.0


def metrics(record: dict) -> dict:
    """The flat fields of one scored model."""
    tasks, out = record["tasks"], {}
    for name in ("arc_easy", "arc_challenge"):
        for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
            out[f"{name}_{key}"] = round(tasks[name][key], 2)
    out["arc_easy_correct"] = tasks["arc_easy"]["outcomes"]                   # per question, for paired errors
    out["wikitext2_test_ppl"] = round(tasks["wikitext2"]["ppl"], 3)
    out["wikitext2_windows"] = tasks["wikitext2"]["windows"]
    out["warnings"] = record["warnings"]
    out["generation"] = record["generation"]
    return out


def score(loaded, root: Path, windows: int | None) -> dict:
    return metrics(quality(loaded, None, root, [TASKS.get(n) for n in TASK_NAMES], windows=windows))


def retained(scores: dict, full_scores: dict) -> dict:
    """Retained above-chance ARC-e accuracy, (acc - 25) / (acc_full - 25), and its standard error over the same
    questions (evaluate.retained_ratio)."""
    ratio, stderr = retained_ratio(*(decode_outcomes(s["arc_easy_correct"]) for s in (full_scores, scores)), CHANCE_PCT)
    return {"arc_easy_retained": round(ratio, 3), "arc_easy_retained_stderr": round(stderr, 3)}


def searched(ctx, target_ms: float, args) -> dict:
    """The best subnet of the chosen space under the target, as {subnet, key, shapes, predicted_ms, proxy_value}."""
    if args.space == "heterogeneous":
        found = heterogeneous_search(ctx, target_ms, args.top_k, "kl", args.refine_rounds, progress=True)
        return {k: found[k] for k in ("subnet", "key", "shapes", "predicted_ms", "proxy_value")}
    best = feasible_best(run_search(ctx, target_ms, args.trials, progress=True), ctx.proxy)
    candidate = Candidate(best.params["depth"], best.params["heads"], best.params["mlp"])
    return {"subnet": ctx.subnet(candidate), "key": candidate.key, "shapes": None,
            "predicted_ms": ctx.latency_ms(candidate), "proxy_value": best.value}


def subnet_tuned(row: dict, tuned, args, root: Path, fingerprint: str, full_scores: dict, partial: Path) -> dict:
    """The adapters row's subnet, fine-tuned alone from the shipped adapters with the user's own command (resumable
    under --out), merged, extracted and scored like the others."""
    run = args.out / f"subnet-{row['target_ratio']}-{args.subnet_steps}"
    subnet_file = run.parent / f"{run.name}.subnet.json"
    strategy = shipped_strategy(blocks=True)
    subnet = heterogeneous_subnet(tuned.model, Strategy.load(strategy).width, [tuple(s) for s in row["shapes"]])
    subnet.save(subnet_file, tuned.fingerprint)
    command = ["amoeba", "finetune", "--strategy", str(strategy), "--subnet", str(subnet_file), "--init-from",
               str(args.adapters), "--steps", str(args.subnet_steps), "--checkpoint-every", "50",
               *adapter_options(tuned.adapters.record), "--corpus",
               str(ROOT / "adapters" / "smollm2-135m.corpus.jsonl"), "--threads", str(args.threads), "--out", str(run)]
    print("$ " + shlex.join(command), flush=True)
    subprocess.run([sys.executable, "-m", "amoeba_search.cli", *command[1:]], check=True)
    own = dataclasses.replace(tuned, adapters=load_adapters(tuned, run))
    with tempfile.TemporaryDirectory() as tmp:
        scores = score(load_model(str(extract(own, subnet, Path(tmp) / "ckpt"))), root, args.windows)
    result = {**{k: row[k] for k in ("target_ratio", "space", "subnet", "layers", "shapes", "predicted_ms",
                                     "target_ms", "full_model_ms", "profile_fingerprint", "proxy", "proxy_value")},
              "method": "adapters+subnet", "adapters_fingerprint": fingerprint, "subnet_steps": args.subnet_steps,
              "subnet_command": shlex.join(command), "subnet_training_seconds": round(own.adapters.record["seconds"]),
              **scores, **retained(scores, full_scores)}
    print(json.dumps({k: v for k, v in result.items() if k not in ("generation", "shapes")}), flush=True)
    with partial.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    return result


def adapter_options(record: dict) -> list[str]:
    """The shipped adapters' own settings, so `--init-from` accepts them."""
    adapter, training = record["adapter"], record["training"]
    return ["--experts", str(adapter["experts"]), "--rank", str(adapter["rank"]), "--alpha", str(adapter["alpha"]),
            "--teacher", training["teacher"], "--mixed-precision", training["mixed_precision"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=Path, default=shipped_adapters())
    parser.add_argument("--targets", default="0.8,0.65,0.5", help="latency ratios (comma list)")
    parser.add_argument("--space", default="heterogeneous", choices=("uniform", "heterogeneous"))
    parser.add_argument("--device", default="intel-xeon", help="committed torch-eager profile of this machine")
    parser.add_argument("--trials", type=int, default=25, help="uniform space: search trials per target and method")
    parser.add_argument("--proxy", default="self_ppl", choices=("ppl", "self_ppl"), help="accuracy proxy of the searches")
    parser.add_argument("--top-k", type=int, default=8, help="heterogeneous space: solutions re-ranked by the proxy")
    parser.add_argument("--refine-rounds", type=int, default=1, help="heterogeneous space: local rounds")
    parser.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens (first N)")
    parser.add_argument("--subnet-steps", type=int, default=0,
                        help="also fine-tune each target's adapters-searched subnet alone for this many steps, from "
                             "the shipped adapters (`amoeba finetune --subnet`; method 'adapters+subnet'); 0: no")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "recovery")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = setup(args.threads)
    root = data_root()
    args.out.mkdir(parents=True, exist_ok=True)
    full = load_model("default")
    tuned = dataclasses.replace(full, adapters=load_adapters(full, args.adapters))
    fingerprints = {"none": None, "adapters": tuned.adapters.fingerprint,
                    "adapters+subnet": f"{tuned.adapters.fingerprint}+{args.subnet_steps}"}
    profile = ProfileStore().load(args.device, "torch-eager")      # its targets: a re-made profile moves them
    partial = args.out / "rows.jsonl"       # finished rows survive an interruption, for the same adapters and profile
    done = {(r["target_ratio"], r["method"]): r for r in map(json.loads, partial.read_text().splitlines())
            if r.get("adapters_fingerprint") == fingerprints[r["method"]] and "arc_easy_correct" in r
            and r.get("profile_fingerprint") == profile.fingerprint
            and r.get("proxy", "ppl") == args.proxy} if partial.exists() else {}
    print("scoring the full model, then the full model with adapters", flush=True)
    full_path = args.out / "full.json"        # the full-model scores survive a rerun too (with adapters: the same)
    saved = json.loads(full_path.read_text()) if full_path.is_file() else [None, None, None]
    if not all(s is None or "arc_easy_correct" in s for s in saved[:2]):
        saved = [None, None, None]                               # written before per-question outcomes were kept
    full_scores = saved[0] or score(full, root, args.windows)
    full_tuned_scores = saved[1] if saved[2:] == [tuned.adapters.fingerprint] else \
        score(tuned, root, args.windows)                            # through the adapted view of the full shape
    write_json_atomic(full_path, [full_scores, full_tuned_scores, tuned.adapters.fingerprint])
    rows = []
    strategy = shipped_strategy(blocks=args.space == "heterogeneous")
    for method, loaded in (("none", full), ("adapters", tuned)):
        request = SearchRequest(str(strategy), args.device, "torch-eager", "decode", data_dir=str(root),
                                storage=f"sqlite:///{args.out / 'studies.db'}",
                                adapters=None if method == "none" else str(args.adapters), proxy=args.proxy)
        ctx = open_search(request, loaded)
        for ratio in [float(r) for r in args.targets.split(",")]:
            if (ratio, method) in done:
                rows.append(done[(ratio, method)])
                continue
            target = ctx.resolve_target(None, ratio)
            found = searched(ctx, target, args)
            with tempfile.TemporaryDirectory() as tmp:
                path = extract(loaded, found["subnet"], Path(tmp) / "ckpt")
                scores = score(load_model(str(path)), root, args.windows)
            row = {"target_ratio": ratio, "method": method, "adapters_fingerprint": fingerprints[method],
                   "space": args.space, "subnet": found["key"],
                   "layers": len(found["subnet"].layers), "shapes": found["shapes"],
                   "predicted_ms": round(found["predicted_ms"], 3), "target_ms": round(target, 3),
                   "full_model_ms": round(ctx.full_model_ms(), 3), "profile_fingerprint": ctx.lut.fingerprint,
                   "proxy": args.proxy, "proxy_value": round(found["proxy_value"], 3),
                   **scores,
                   **retained(scores, full_scores)}
            print(json.dumps({k: v for k, v in row.items() if k not in ("generation", "shapes")}), flush=True)
            with partial.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            rows.append(row)
    if args.subnet_steps:
        for row in [r for r in rows if r["method"] == "adapters"]:
            key = (row["target_ratio"], "adapters+subnet")
            rows.append(done[key] if key in done else subnet_tuned(row, tuned, args, root, fingerprints[key[1]],
                                                                    full_scores, partial))
    record = {"shipped_adapters": str(args.adapters.relative_to(ROOT) if args.adapters.is_relative_to(ROOT)
                                      else args.adapters),
              "adapters_fingerprint": tuned.adapters.fingerprint,
              "adapters_record": {k: tuned.adapters.record.get(k) for k in ("step", "seconds", "training",
                                                                            "adapter", "initialized_from")},
              "full_model": full_scores, "full_with_adapters": full_tuned_scores, "rows": rows,
              "details": {"command": command, "environment": environment(), "trials": args.trials,
                          "space": args.space, "top_k": args.top_k, "refine_rounds": args.refine_rounds,
                          "strategy": strategy.name,
                          "profile": f"{args.device}/torch-eager decode C=128 (committed; fingerprint "
                                     f"{profile.fingerprint}, {profile.meta['design']['layers_per_row']}-block rows)",
                          "proxy": {"name": ctx.proxy.name, **ctx.proxy.settings}, "chance_pct": CHANCE_PCT}}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "recovery.json", record)
    (args.results / "recovery.md").write_text(markdown(record))
    print(markdown(record))


def _retained(r: dict) -> str:
    return f"{r['arc_easy_retained']:.3f} ± {r['arc_easy_retained_stderr']:.3f}"


def _mc(r: dict, name: str) -> str:
    return f"{r[f'{name}_acc']:.1f} ± {r[f'{name}_acc_stderr']:.1f} / {r[f'{name}_acc_norm']:.1f}"


def _label(row: dict) -> str:
    if not row.get("shapes"):
        return row["subnet"]
    mlp_only = sum(1 for heads, mlp in row["shapes"] if heads == 0 and mlp > 0)      # (0, 0): removed
    return f"{row['layers']} layers ({mlp_only} MLP-only), per-layer widths"


def _started_from(adapters_record: dict) -> str:
    start = adapters_record.get("initialized_from")
    return "" if not start else f", on top of adapters trained {start['step']} steps (`--init-from`)"


def _proxy(details: dict) -> str:
    proxy = details["proxy"]
    if isinstance(proxy, str):                              # runs written before the proxy was a choice
        return proxy
    text = "WikiText-2 valid perplexity" if proxy["name"] == "ppl" else "perplexity on held-out self-written text"
    return f"the `{proxy['name']}` proxy ({text}, {proxy['samples']} x {proxy['seq_len']} tokens)"


def markdown(record: dict) -> str:
    full, tuned = record["full_model"], record["full_with_adapters"]
    lines = ["# Recovery with the shipped adapters", "",
             f"`{record['details']['command']}`; adapters `{record['shipped_adapters']}` "
             f"({record['adapters_record']['step']} steps, {record['adapters_record']['seconds'] / 60:.0f} min of "
             f"training{_started_from(record['adapters_record'])}). Each subnet is searched in the {record['details'].get('space', 'uniform')} space on "
             f"{record['details']['profile']}, ranked by {_proxy(record['details'])}, and extracted (adapters merged "
             "for `adapters`); every row is the "
             "checkpoint loaded back from disk. With frozen-teacher adapters the full shape gets no update "
             "(`SMoLAdapters.adapts`), so `full model + adapters` is scored through the adapted path and must equal "
             "the original.", "",
             "ARC cells: acc ± stderr / acc_norm, in %, full validation sets (570 / 299 questions); chance is 25%. "
             "ARC-e retained = (acc - 25) / (acc_full - 25) ± its standard error over the same questions as the "
             "full model (delta method: what both models answer alike cancels).",
             "", "| model | subnet | predicted ms | ARC-e | ARC-e retained | ARC-c | WikiText-2 test ppl |",
             "|---|---|---|---|---|---|---|",
             f"| full model | d30-h9-m1536 | {record['rows'][0]['full_model_ms']:.2f} | {_mc(full, 'arc_easy')} | 1 | "
             f"{_mc(full, 'arc_challenge')} | {full['wikitext2_test_ppl']:.2f} |",
             f"| full model + adapters | d30-h9-m1536 | {record['rows'][0]['full_model_ms']:.2f} | "
             f"{_mc(tuned, 'arc_easy')} | {_retained(retained(tuned, full))} | "
             f"{_mc(tuned, 'arc_challenge')} | {tuned['wikitext2_test_ppl']:.2f} |"]
    for r in sorted(record["rows"], key=lambda r: (-r["target_ratio"], r["method"] != "none")):
        lines.append(f"| {r['target_ratio']:.0%} latency, {r['method']} | {_label(r)} | {r['predicted_ms']:.2f} | "
                     f"{_mc(r, 'arc_easy')} | {_retained(r)} | {_mc(r, 'arc_challenge')} | "
                     f"{r['wikitext2_test_ppl']:.2f} |")
    tuned_alone = [r for r in record["rows"] if r["method"] == "adapters+subnet"]
    if tuned_alone:
        lines += ["", f"`adapters+subnet`: the `adapters` row's subnet, fine-tuned alone from the shipped adapters for "
                  f"{tuned_alone[0]['subnet_steps']} steps (`amoeba finetune --subnet`, "
                  f"{tuned_alone[0]['subnet_training_seconds'] / 60:.0f} min on this CPU), merged and extracted: "
                  f"`{tuned_alone[0]['subnet_command']}`."]
    lines += ["", "Differences under about 2 standard errors of the difference (~4 points for ARC-e, ~5 for ARC-c) "
              "are within noise; ARC-challenge is near chance for this 135M model even at full size.", "",
              "Warnings (scores within 2 standard errors of chance):"]
    warned = [(name, w) for name, r in [("full model", full), ("full + adapters", tuned)] +
              [(f"{r['target_ratio']:.0%} {r['method']}", r) for r in record["rows"]] for w in r["warnings"]]
    lines += [f"- {name}: {w}" for name, w in warned] or ["- none"]
    lines += ["", "Subnets (kept layers as heads/MLP channels, x = removed, 0 heads = MLP-only):", ""]
    lines += [f"- {r['target_ratio']:.0%} {r['method']}: `{r['subnet']}`" for r in record["rows"]]
    lines += ["", "## Greedy answers (32 new tokens)", ""]
    models = [("full model", full), ("full + adapters", tuned)] + [
        (f"{r['target_ratio']:.0%} {r['method']} ({_label(r)})", r) for r in record["rows"]]
    for index, sample in enumerate(full["generation"]):
        lines.append(f"**{sample['prompt']}**")
        lines.append("")
        lines += [f"- {name}: {r['generation'][index]['text']!r}" for name, r in models]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
