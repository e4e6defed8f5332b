"""Claim: `amoeba evaluate` gives the same ARC-easy acc / acc_norm as lm-evaluation-harness (within 0.5 points).

Extracts the full embedded model as a plain checkpoint, scores ARC-easy validation with lm-eval's `hf` model
(local task YAML, prompt `Question: ...\\nAnswer:`) and with amoeba_search, and writes
benchmarks/results/lm_eval_check.json. Needs `pip install lm-eval` (part of the `test` extra).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import RESULTS, setup

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.data import data_root, read_arc
from amoeba_search.evaluate import multiple_choice
from amoeba_search.extract import extract
from amoeba_search.lm_eval_bridge import lm_eval_arc
from amoeba_search.models import load_model
from amoeba_search.subnet import ModelDims, Subnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N questions (default: all 570)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks-dir", type=Path, default=None,
                        help="keep lm-eval's task YAML here (reuse it with lm_eval --include_path DIR)")
    args = parser.parse_args()
    command = setup(args.threads)
    data_file = data_root() / "arc/arc_easy_validation.jsonl"
    full = load_model("default")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = extract(full, Subnet.full(ModelDims.from_config(full.model.config)), Path(tmp) / "full")
        start = time.perf_counter()
        theirs = lm_eval_arc(checkpoint, data_file, args.tasks_dir or Path(tmp) / "tasks", limit=args.limit)
        lm_eval_seconds = time.perf_counter() - start
        extracted = load_model(str(checkpoint))
        ours = multiple_choice(extracted.model, extracted.tokenizer, read_arc(data_file)[: args.limit])
    diff = {k: abs(ours[k] - theirs[k]) for k in ("acc", "acc_norm")}
    result = {
        "claim": "amoeba evaluate matches lm-evaluation-harness on ARC-easy within 0.5 points",
        "command": command, "model": full.fingerprint, "questions": ours["questions"],
        "amoeba": {"acc": ours["acc"], "acc_norm": ours["acc_norm"], "seconds": ours["seconds"]},
        "lm_eval": {**theirs, "seconds": lm_eval_seconds},
        "abs_diff_points": diff, "within_0_5_points": max(diff.values()) <= 0.5,
        "environment": environment(),
    }
    write_json_atomic(RESULTS / "lm_eval_check.json", result)
    print(f"ARC-easy ({ours['questions']} q)  amoeba acc {ours['acc']:.2f} acc_norm {ours['acc_norm']:.2f} "
          f"({ours['seconds']:.1f} s)  |  lm-eval acc {theirs['acc']:.2f} acc_norm {theirs['acc_norm']:.2f} "
          f"({lm_eval_seconds:.1f} s)  |  max diff {max(diff.values()):.2f} points")


if __name__ == "__main__":
    main()
