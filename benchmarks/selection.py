"""Claim: DP layer selection keeps more knowledge than drop-last-k, ShortGPT, one-shot PPL and random removal, and
FLAP width selection (with bias compensation) more than weight magnitude and structured Wanda.

Selection calibrates on the WikiText-2 *valid* split only; results are on held-out data: WikiText-2 *test*
perplexity (first --ppl-windows windows of 512 tokens), ARC-easy / ARC-challenge validation accuracy, and MMLU
validation accuracy on every --mmlu-stride-th question (all 57 subjects). Width ratio = share of MLP channels kept
(all 9 heads); width rows use the DP's layers for their depth. No fine-tuning anywhere.
Resumable: finished rows are kept in results/selection.partial.jsonl (delete it to start over).
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
from amoeba_search.selection.width import width_section, width_subnet
from amoeba_search.subnet import ModelDims, Subnet
from amoeba_search.view import subnet_view

PARTIAL = RESULTS / "selection.partial.jsonl"
METRICS = ("wikitext2_test_ppl", "arc_easy_acc", "arc_challenge_acc", "mmlu_acc")


def held_out_data(root: Path, args) -> dict:
    """Read the held-out sets once: the test text and the multiple-choice items per reported metric."""
    return {"text": read_text(root / "wikitext2/test.txt"),
            "arc_easy_acc": read_arc(root / "arc/arc_easy_validation.jsonl")[:args.arc_limit],
            "arc_challenge_acc": read_arc(root / "arc/arc_challenge_validation.jsonl")[:args.arc_limit],
            "mmlu_acc": read_mmlu(root / "mmlu/zero_shot_val.jsonl")[::args.mmlu_stride]}


def evaluate_subnet(model: LoadedModel, subnet: Subnet, data: dict, args) -> dict:
    """Held-out metrics of a subnet through the in-place view."""
    with subnet_view(model.model, subnet):
        ppl = perplexity(model.model, model.tokenizer, data["text"], max_windows=args.ppl_windows, progress=False)
        scores = {name: multiple_choice(model.model, model.tokenizer, data[name], progress=False)["acc"]
                  for name in ("arc_easy_acc", "arc_challenge_acc", "mmlu_acc")}
    return {"wikitext2_test_ppl": ppl["ppl"], **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="24,20,15")
    parser.add_argument("--widths", default="0.75,0.5", help="MLP ratios for the width rows (1.0 = depth rows)")
    parser.add_argument("--dp-strategy", type=Path, default=None, help="reuse a DP strategy from `amoeba select`")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--random-seeds", type=int, default=2)
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--mmlu-stride", type=int, default=3)
    parser.add_argument("--arc-limit", type=int, default=None, help="first N ARC questions (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    command = setup(args.threads)
    depths = [int(d) for d in args.depths.split(",")]
    widths = [float(w) for w in args.widths.split(",")]
    root, model = data_root(), load_model("default")
    data = held_out_data(root, args)
    dims = ModelDims.from_config(model.model.config)
    calibration = text_calibration(model.tokenizer, read_text(root / "wikitext2/valid.txt"), args.samples,
                                   args.seq_len, name="wikitext2/valid.txt")
    max_removed = dims.num_layers - min(depths)
    if args.dp_strategy:
        dp = Strategy.load(args.dp_strategy)
        dp.check_model(model.fingerprint)
    else:
        dp = select_depth(model, calibration, "dp", max_removed, keep_last=1, width_method=None)
    depth_methods = {"dp": dp}
    for method in ("drop_last", "shortgpt", "shortened_ppl"):
        depth_methods[method] = select_depth(model, calibration, method, max_removed, keep_last=1, width_method=None)
    for seed in range(args.random_seeds):
        depth_methods[f"random/{seed}"] = select_depth(model, calibration, "random", max_removed, keep_last=1,
                                                       seed=seed, width_method=None)
    width_scores = {m: width_section(model.model, calibration, m) for m in ("flap", "magnitude", "wanda")}

    # (label, depth, width) -> subnet
    configs: dict[tuple[str, int, float], Subnet] = {}
    for depth in depths:
        for label, strategy in depth_methods.items():
            configs[(label, depth, 1.0)] = Subnet.uniform(dims, strategy.layers_for(depth))
    for depth in [dims.num_layers, *depths]:
        layers = dp.layers_for(depth) if depth < dims.num_layers else list(range(dims.num_layers))
        for width in widths:
            for label, scores in width_scores.items():
                configs[(label, depth, width)] = width_subnet(model.model, scores, layers, mlp=width,
                                                              compensate=label == "flap")
            if depth == dims.num_layers:  # ablation: FLAP's ranking without its bias compensation
                configs[("flap_no_compensation", depth, width)] = width_subnet(
                    model.model, width_scores["flap"], layers, mlp=width, compensate=False)

    done: dict[tuple, dict] = {}
    if PARTIAL.exists():
        for line in PARTIAL.read_text().splitlines():
            row = json.loads(line)
            done[(row["method"], row["layers"], row["width"], tuple(row["layer_list"]))] = row
    with open(PARTIAL, "a") as partial:
        for (label, depth, width), subnet in configs.items():
            key = (label, depth, width, subnet.layers)
            if key not in done:
                started = time.perf_counter()
                done[key] = {"method": label, "layers": depth, "width": width, "layer_list": list(subnet.layers),
                             **evaluate_subnet(model, subnet, data, args), "eval_seconds": time.perf_counter() - started}
                partial.write(json.dumps(done[key]) + "\n")
                partial.flush()
            row = done[key]
            print(f"{label:<21} {depth:2d} layers  width {width:4.2f}  ppl {row['wikitext2_test_ppl']:12.2f}  "
                  f"arc-e {row['arc_easy_acc']:5.2f}  arc-c {row['arc_challenge_acc']:5.2f}  mmlu {row['mmlu_acc']:5.2f}",
                  flush=True)

    rows = []
    for (label, depth, width), subnet in configs.items():
        if not label.startswith("random/"):
            rows.append(done[(label, depth, width, subnet.layers)])
        elif label == "random/0":
            seeds = [done[(f"random/{s}", depth, width, configs[(f"random/{s}", depth, width)].layers)]
                     for s in range(args.random_seeds)]
            rows.append({"method": "random", "layers": depth, "width": width, "seeds": args.random_seeds,
                         "layer_lists": [r["layer_list"] for r in seeds],
                         **{k: statistics.fmean(r[k] for r in seeds) for k in METRICS}})
    extraction = []
    for depth in depths:  # extracted DP + FLAP subnets must reproduce the in-place perplexity
        subnet = configs[("flap", depth, widths[0])]
        with tempfile.TemporaryDirectory() as tmp:
            small = load_model(str(extract(model, subnet, Path(tmp) / "sub")))
            direct = perplexity(small.model, small.tokenizer, data["text"], max_windows=4, progress=False)["ppl"]
        with subnet_view(model.model, subnet):
            viewed = perplexity(model.model, model.tokenizer, data["text"], max_windows=4, progress=False)["ppl"]
        extraction.append({"layers": depth, "width": widths[0], "in_place_ppl": viewed, "extracted_ppl": direct})
    full = evaluate_subnet(model, Subnet.full(dims), data, args)
    result = {"rows": rows, "full_model": full, "dp_seconds": dp.depth.seconds,
              "dp_evaluations": dp.depth.evaluations, "calibration": dp.calibration,
              "dp_max_removed": dp.depth.max_removed, "protected_layers": dp.depth.protected_layers,
              "held_out": {"wikitext2_test_windows": args.ppl_windows, "seq_len": 512,
                           "mmlu": f"every {args.mmlu_stride}th question of mmlu/zero_shot_val.jsonl",
                           "arc": f"first {args.arc_limit} questions" if args.arc_limit else "full validation splits"},
              "width_ratio_meaning": "share of MLP channels kept, all attention heads kept",
              "extraction_check_4_windows": extraction, "command": command, "model": model.fingerprint,
              "environment": environment()}
    write_json_atomic(RESULTS / "selection.json", result)
    write_markdown(result)
    print(f"wrote {RESULTS / 'selection.json'} and selection.md")


def write_markdown(result: dict) -> None:
    env = result["environment"]
    lines = ["# Subnet selection on SmolLM2-135M-Instruct (no fine-tuning)", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {env['machine']}, {env['torch_threads']} threads, torch {env['torch']}, "
             f"transformers {env['transformers']}, {env['date']}  ",
             f"Calibration (selection only): {result['calibration']}  ",
             f"DP: {result['dp_evaluations']} evaluations in {result['dp_seconds'] / 60:.1f} min "
             f"(up to {result['dp_max_removed']} removed, protected layers {result['protected_layers']})  ",
             f"Held out: WikiText-2 test, first {result['held_out']['wikitext2_test_windows']} x 512-token windows; "
             f"ARC validation: {result['held_out']['arc']}; MMLU: {result['held_out']['mmlu']}.  ",
             f"Width = {result['width_ratio_meaning']}; width rows use the DP's layers at that depth. "
             "flap = FLAP fluctuation ranking + bias compensation; magnitude, wanda: no compensation.", "",
             "| layers | width | method | WikiText-2 test ppl | ARC-e acc % | ARC-c acc % | MMLU acc % |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    full = result["full_model"]
    lines.append(f"| 30 | 1.00 | full model | {full['wikitext2_test_ppl']:.2f} | {full['arc_easy_acc']:.2f} | "
                 f"{full['arc_challenge_acc']:.2f} | {full['mmlu_acc']:.2f} |")
    for row in sorted(result["rows"], key=lambda r: (-r["layers"], -r["width"])):
        lines.append(f"| {row['layers']} | {row['width']:.2f} | {row['method']} | {row['wikitext2_test_ppl']:.2f} | "
                     f"{row['arc_easy_acc']:.2f} | {row['arc_challenge_acc']:.2f} | {row['mmlu_acc']:.2f} |")
    lines += ["", "Extraction check (4 test windows, in-place vs extracted checkpoint): " + "; ".join(
        f"{e['layers']} layers x {e['width']}: {e['in_place_ppl']:.4f} vs {e['extracted_ppl']:.4f}"
        for e in result["extraction_check_4_windows"])]
    (RESULTS / "selection.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
