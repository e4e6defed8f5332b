"""Claim: the DP layer selection keeps more knowledge than drop-last-k, ShortGPT, one-shot PPL and random removal.

Selects layers on the WikiText-2 *valid* split (calibration), then reports on held-out data: WikiText-2 *test*
perplexity (first --ppl-windows windows of 512), ARC-easy / ARC-challenge validation accuracy, and MMLU validation
accuracy on every --mmlu-stride-th question (all 57 subjects). Depth only for now (width 1.0): FLAP / magnitude /
Wanda width selection is not implemented yet. Resumable: finished rows are kept in results/selection.partial.jsonl.
Writes benchmarks/results/selection.json and selection.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import RESULTS, setup

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.data import data_root, read_arc, read_mmlu, read_text
from amoeba_search.evaluate import multiple_choice, perplexity
from amoeba_search.extract import extract
from amoeba_search.models import LoadedModel, load_model
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.select import select_depth
from amoeba_search.selection.strategy import Strategy
from amoeba_search.subnet import ModelDims, Subnet
from amoeba_search.view import subnet_view

PARTIAL = RESULTS / "selection.partial.jsonl"


def evaluate_layers(model: LoadedModel, layers: list[int], root: Path, args) -> dict:
    """Held-out metrics of the depth-only subnet through the in-place view."""
    subnet = Subnet.uniform(ModelDims.from_config(model.model.config), layers)
    with subnet_view(model.model, subnet):
        ppl = perplexity(model.model, model.tokenizer, read_text(root / "wikitext2/test.txt"),
                         max_windows=args.ppl_windows, progress=False)
        scores = {name: multiple_choice(model.model, model.tokenizer, items, progress=False)["acc"]
                  for name, items in (("arc_easy_acc", read_arc(root / "arc/arc_easy_validation.jsonl")),
                                      ("arc_challenge_acc", read_arc(root / "arc/arc_challenge_validation.jsonl")),
                                      ("mmlu_acc", read_mmlu(root / "mmlu/zero_shot_val.jsonl")[::args.mmlu_stride]))}
    return {"wikitext2_test_ppl": ppl["ppl"], **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="24,20,15")
    parser.add_argument("--dp-strategy", type=Path, default=None, help="reuse a DP strategy from `amoeba select`")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--random-seeds", type=int, default=2)
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--mmlu-stride", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    command = setup(args.threads)
    depths = [int(d) for d in args.depths.split(",")]
    root, model = data_root(), load_model("default")
    num_layers = model.model.config.num_hidden_layers
    calibration = text_calibration(model.tokenizer, read_text(root / "wikitext2/valid.txt"), args.samples,
                                   args.seq_len, name="wikitext2/valid.txt")
    max_removed = num_layers - min(depths)
    strategies: dict[str, Strategy] = {}
    if args.dp_strategy:
        strategies["dp"] = Strategy.load(args.dp_strategy)
        strategies["dp"].check_model(model.fingerprint)
        used = {k: strategies["dp"].calibration.get(k) for k in ("samples", "seq_len", "seed")}
        if used != {k: calibration.source[k] for k in used}:
            print(f"note: the DP strategy was calibrated with {used}, the baselines with {calibration.source}")
    else:
        strategies["dp"] = select_depth(model, calibration, "dp", max_removed, keep_last=1)
    for method in ("drop_last", "shortgpt", "shortened_ppl"):
        strategies[method] = select_depth(model, calibration, method, max_removed, keep_last=1)
    for seed in range(args.random_seeds):
        strategies[f"random/{seed}"] = select_depth(model, calibration, "random", max_removed, keep_last=1, seed=seed)
    done = {}
    if PARTIAL.exists():
        for line in PARTIAL.read_text().splitlines():
            row = json.loads(line)
            done[(row["method"], tuple(row["layer_list"]))] = row
    with open(PARTIAL, "a") as partial:
        for depth in depths:
            for name, strategy in strategies.items():
                layers = strategy.layers_for(depth)
                key = (name, tuple(layers))
                if key not in done:
                    started = time.perf_counter()
                    done[key] = {"method": name, "layers": depth, "width": 1.0, "layer_list": layers,
                                 **evaluate_layers(model, layers, root, args),
                                 "eval_seconds": time.perf_counter() - started}
                    partial.write(json.dumps(done[key]) + "\n")
                    partial.flush()
                row = done[key]
                print(f"{name:<14} {depth:2d} layers  ppl {row['wikitext2_test_ppl']:12.2f}  arc-e "
                      f"{row['arc_easy_acc']:5.2f}  arc-c {row['arc_challenge_acc']:5.2f}  mmlu {row['mmlu_acc']:5.2f}")
    rows = []
    for depth in depths:
        for name in ("dp", "drop_last", "shortgpt", "shortened_ppl"):
            rows.append(done[(name, tuple(strategies[name].layers_for(depth)))])
        seeds = [done[(f"random/{s}", tuple(strategies[f"random/{s}"].layers_for(depth)))]
                 for s in range(args.random_seeds)]
        rows.append({"method": "random", "layers": depth, "width": 1.0, "seeds": args.random_seeds,
                     "layer_lists": [r["layer_list"] for r in seeds],
                     **{k: statistics.fmean(r[k] for r in seeds) for k in
                        ("wikitext2_test_ppl", "arc_easy_acc", "arc_challenge_acc", "mmlu_acc")}})
    # Extracted DP subnets must reproduce the in-place perplexity.
    extraction = []
    for depth in depths:
        layers = strategies["dp"].layers_for(depth)
        with tempfile.TemporaryDirectory() as tmp:
            small = load_model(str(extract(model, Subnet.uniform(ModelDims.from_config(model.model.config), layers),
                                           Path(tmp) / "dp")))
            direct = perplexity(small.model, small.tokenizer, read_text(root / "wikitext2/test.txt"), max_windows=4,
                                progress=False)["ppl"]
        with subnet_view(model.model, Subnet.uniform(ModelDims.from_config(model.model.config), layers)):
            viewed = perplexity(model.model, model.tokenizer, read_text(root / "wikitext2/test.txt"), max_windows=4,
                                progress=False)["ppl"]
        extraction.append({"layers": depth, "in_place_ppl_4_windows": viewed, "extracted_ppl_4_windows": direct})
    dp_info = strategies["dp"].depth
    result = {"rows": rows, "dp_seconds": dp_info["seconds"], "dp_evaluations": dp_info["evaluations"],
              "calibration": strategies["dp"].calibration, "dp_max_removed": dp_info["max_removed"],
              "protected_layers": dp_info["protected_layers"],
              "held_out": {"wikitext2_test_windows": args.ppl_windows, "seq_len": 512,
                           "mmlu": f"every {args.mmlu_stride}th question of mmlu/zero_shot_val.jsonl",
                           "arc": "full validation splits"},
              "extraction_check": extraction, "width": "not implemented yet (FLAP/magnitude/Wanda pending)",
              "command": command, "model": model.fingerprint, "environment": environment()}
    write_json_atomic(RESULTS / "selection.json", result)
    write_markdown(result)
    print(f"wrote {RESULTS / 'selection.json'} and selection.md")


def write_markdown(result: dict) -> None:
    lines = ["# Depth selection on SmolLM2-135M-Instruct (no fine-tuning)", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['environment']['machine']}, "
             f"{result['environment']['torch_threads']} threads, torch {result['environment']['torch']}, "
             f"transformers {result['environment']['transformers']}  ",
             f"Calibration: {result['calibration']}; DP: {result['dp_evaluations']} evaluations in "
             f"{result['dp_seconds'] / 60:.1f} min (max {result['dp_max_removed']} removed, protected layers "
             f"{result['protected_layers']})  ",
             f"Held out: WikiText-2 test, first {result['held_out']['wikitext2_test_windows']} x 512-token windows; "
             f"ARC validation (full); MMLU: {result['held_out']['mmlu']}. Width: {result['width']}.", "",
             "| layers | method | WikiText-2 test ppl | ARC-e acc % | ARC-c acc % | MMLU acc % |",
             "|---:|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['layers']} | {row['method']} | {row['wikitext2_test_ppl']:.2f} | "
                     f"{row['arc_easy_acc']:.2f} | {row['arc_challenge_acc']:.2f} | {row['mmlu_acc']:.2f} |")
    lines += ["", "Extraction check (DP subnets, 4 test windows): " + "; ".join(
        f"{e['layers']} layers in-place {e['in_place_ppl_4_windows']:.3f} vs extracted {e['extracted_ppl_4_windows']:.3f}"
        for e in result["extraction_check"])]
    (RESULTS / "selection.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
