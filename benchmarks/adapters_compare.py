"""Claim checked: adapters that replace the shipped ones make no subnet worse. Scores fixed subnets (uniform keys
`dD-hH-mM` of the shipped strategy's space; heterogeneous `het..` keys as `search --space heterogeneous` writes
them) through the adapted view (equal to the merged, extracted checkpoint: tests/test_finetune.py) with each set
of adapters, and without: ARC-easy and ARC-challenge on their full validation sets (acc, acc_norm, stderr),
WikiText-2 test perplexity, greedy answers; and each set's paired ARC difference (same questions) against the first
set on the same subnet, which resolves far smaller gaps than two independent scores. Writes
benchmarks/results/<--results>.{json,md}: the committed runs are adapters_compare.{json,md} (the default name:
solver-shape adapters against uniform-only ones) and adapters_compare-more-distillation.{json,md} (the shipped
adapters against 400 more steps on a second self-written corpus, or on the MMLU calibration questions; README)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from _common import RESULTS, setup
from recovery import TASK_NAMES, metrics

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.data import data_root
from amoeba_search.evaluate import decode_outcomes, paired_difference_pct
from amoeba_search.finetune.checkpoint import load_adapters
from amoeba_search.models import load_model
from amoeba_search.quality import quality
from amoeba_search.resources import shipped_strategy
from amoeba_search.selection.blocks import REMOVED
from amoeba_search.selection.space import Candidate, candidate_subnet
from amoeba_search.selection.strategy import Strategy
from amoeba_search.selection.width import heterogeneous_subnet
from amoeba_search.tasks import TASKS


def subnet_of(loaded, strategy: Strategy, key: str):
    """The subnet a uniform (`d25-h9-m1344`) or heterogeneous (`het29:9/1536,x,...`) key names."""
    uniform = re.fullmatch(r"d(\d+)-h(\d+)-m(\d+)", key)
    if uniform:
        return candidate_subnet(loaded.model, strategy, Candidate(*map(int, uniform.groups())))
    shapes = [REMOVED if part == "x" else tuple(map(int, part.split("/"))) for part in key.split(":", 1)[1].split(",")]
    return heterogeneous_subnet(loaded.model, strategy.width, shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", required=True, help="comma list of adapter dirs; 'none' = no adapters")
    parser.add_argument("--subnets", required=True, help="subnet keys separated by ';' (heterogeneous keys hold commas)")
    parser.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens (first N)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="adapters_compare")
    args = parser.parse_args()
    command = setup(args.threads)
    root = data_root()
    full = load_model("default")
    strategy = Strategy.load(shipped_strategy())
    rows, names, correct = [], args.adapters.split(","), {}
    for name in names:
        loaded = full if name == "none" else dataclasses.replace(full, adapters=load_adapters(full, Path(name)))
        for key in args.subnets.split(";"):
            record = quality(loaded, subnet_of(full, strategy, key), root, [TASKS.get(n) for n in TASK_NAMES],
                             windows=args.windows)
            row = {"adapters": name, "subnet": key, **metrics(record)}
            for task in TASK_NAMES[:2]:
                correct[name, key, task] = decode_outcomes(record["tasks"][task]["outcomes"])
                if name != names[0]:
                    row[f"{task}_acc_diff"], row[f"{task}_acc_diff_stderr"] = (round(v, 2) for v in (
                        paired_difference_pct(correct[names[0], key, task], correct[name, key, task])))
            print({k: v for k, v in row.items() if k != "generation"}, flush=True)
            rows.append(row)
    record = {"rows": rows, "details": {"command": command, "environment": environment(), "windows": args.windows,
                                        "strategy": shipped_strategy().name, "paired_reference": names[0]}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{args.results}.json", record)
    lines = ["# Adapters compared on fixed subnets", "", f"`{command}`", "",
             "ARC cells: acc ± stderr / acc_norm in %, full validation sets (chance 25%); WikiText-2 test ppl on the "
             f"first {args.windows} x 512-token windows. Between two independent scores, differences under ~4 "
             f"ARC-e points are within noise; the paired columns compare acc with {names[0]}'s on the same subnet "
             "and questions (difference ± its standard error): beyond 2 standard errors it is a real difference on "
             "these questions.", "",
             "| subnet | adapters | ARC-e | ARC-c | ARC-e acc, paired | ARC-c acc, paired | WikiText-2 test ppl |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: r["subnet"]):
        cells = [f"{row[f'{t}_acc']:.1f} ± {row[f'{t}_acc_stderr']:.1f} / {row[f'{t}_acc_norm']:.1f}"
                 for t in TASK_NAMES[:2]]
        paired = [f"{row[f'{t}_acc_diff']:+.1f} ± {row[f'{t}_acc_diff_stderr']:.1f}" if f"{t}_acc_diff" in row
                  else "reference" for t in TASK_NAMES[:2]]
        lines.append(f"| `{row['subnet'][:40]}` | {row['adapters']} | {cells[0]} | {cells[1]} | {paired[0]} | "
                     f"{paired[1]} | {row['wikitext2_test_ppl']:.2f} |")
    lines += ["", "## Greedy answers", ""]
    lines += [f"- `{r['subnet'][:40]}`, {r['adapters']}: " + " | ".join(f"{g['prompt']!r} -> {g['text']!r}"
                                                                       for g in r["generation"]) for r in rows]
    (RESULTS / f"{args.results}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
