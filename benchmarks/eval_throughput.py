"""Claim: evaluation is fast enough for selection and search loops (ARC-easy, 570 questions, in <= 40 s on 2 threads).

Measures evaluation throughput of the embedded SmolLM2-135M (fp32) and its full-model figures: WikiText-2 test
perplexity (non-overlapping windows), ARC-easy / ARC-challenge / MMLU validation accuracy. Writes
benchmarks/results/eval_throughput.json (schema given in the foundation issue) and prints a table.
Check the machine is idle first: on a shared 2-core machine other jobs inflate the times.
"""

from __future__ import annotations

import argparse

from _common import RESULTS, setup

from amoeba_search.artifacts import cpu_name, environment, write_json_atomic
from amoeba_search.data import data_root
from amoeba_search.models import load_model
from amoeba_search.tasks import TASKS
from amoeba_search.tasks.base import evaluate_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=None, help="cap on perplexity windows (default: whole test set)")
    args = parser.parse_args()
    command = setup(args.threads)
    model = load_model("default")
    root = data_root()
    ppl = evaluate_tasks(model, [TASKS.get("wikitext2")], root, windows=args.windows, seq_len=args.seq_len)["tasks"]
    mc = evaluate_tasks(model, [TASKS.get(n) for n in ("arc_easy", "arc_challenge", "mmlu")], root)["tasks"]
    wiki, arc_e, arc_c, mmlu = ppl["wikitext2"], mc["arc_easy"], mc["arc_challenge"], mc["mmlu"]
    mc_questions = sum(r["questions"] for r in mc.values())
    mc_seconds = sum(r["seconds"] for r in mc.values())
    result = {
        "model": model.fingerprint["name"],
        "machine": f"{cpu_name()}, {args.threads} threads",
        "tokens_per_s": wiki["tokens_per_s"],
        "mc_questions_per_s": mc_questions / mc_seconds,
        "full_model": {"wikitext2_test_ppl": wiki["ppl"], "seq_len": wiki["seq_len"],
                       "arc_easy_acc": arc_e["acc"], "arc_challenge_acc": arc_c["acc"], "mmlu_acc": mmlu["acc"]},
        "details": {
            "command": command,
            "fingerprint": model.fingerprint,
            "dtype": "float32",
            "tokens_per_s_meaning": "perplexity evaluation: input tokens per second (forward + LM head + loss)",
            "wikitext2": wiki,
            "arc_easy": arc_e, "arc_challenge": arc_c, "mmlu": mmlu,
            "arc_easy_seconds_target": 40.0,
            "acc_norm": {"arc_easy": arc_e["acc_norm"], "arc_challenge": arc_c["acc_norm"], "mmlu": mmlu["acc_norm"]},
        },
        "environment": environment(),
    }
    path = write_json_atomic(RESULTS / "eval_throughput.json", result)
    print(f"model {result['model']} on {result['machine']}")
    print(f"perplexity eval   {wiki['tokens_per_s']:8.0f} tokens/s  ({wiki['windows']} x {wiki['seq_len']} tokens, "
          f"{wiki['seconds']:.1f} s)  WikiText-2 test ppl {wiki['ppl']:.2f}")
    for name, r in mc.items():
        print(f"{name:<14} {r['questions_per_s']:8.1f} q/s  {r['tokens_per_s']:6.0f} tok/s  {r['questions']:5d} q in "
              f"{r['seconds']:6.1f} s  acc {r['acc']:.2f}  acc_norm {r['acc_norm']:.2f}")
    print(f"multiple choice overall {result['mc_questions_per_s']:.1f} questions/s; wrote {path}")


if __name__ == "__main__":
    main()
