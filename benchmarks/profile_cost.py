"""Claim: a lookup table costs far less than measuring every subnet of the search space directly.

LUT cost: the sum of every row's wall time in the committed profile (model extraction excluded; export/compile,
warm-up and repeats included, all passes). Direct cost: the number of subnets in the uniform search space (one
DP layer set per depth 15..30 x every profiled width) times the mean wall time of timing one random extracted
subnet through the same flow (both phases, one pass), measured by benchmarks/predictor_accuracy.py - an
extrapolation from those measured subnets, labelled as such. Per-layer widths would multiply the direct count
by far more.
Updates benchmarks/results/<results>.json ("profile_cost") and <results>.md (default predictor).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import RESULTS

from amoeba_search.artifacts import read_json, write_json_atomic
from amoeba_search.profiling.lut import MeasurementLog
from amoeba_search.profiling.store import ProfileStore

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True)
    parser.add_argument("--flows", default="torch-eager,torch-compile,onnxruntime,llama.cpp")
    parser.add_argument("--min-depth", type=int, default=15)
    parser.add_argument("--results", default="predictor", help="stem predictor_accuracy.py --results wrote")
    args = parser.parse_args()
    out_json = RESULTS / f"{args.results}.json"
    results = read_json(out_json, "predictor results", "run benchmarks/predictor_accuracy.py first")
    partial = [json.loads(line) for line in (RESULTS / f"{args.results}.partial.jsonl").read_text().splitlines()
               if line.strip().endswith("}")]
    per_flow = []
    for flow in args.flows.split(","):
        lut = ProfileStore().load(args.device, flow)
        measurements = MeasurementLog(lut.directory).read()
        settings = lut.settings()
        depths = lut.meta["model_dims"]["num_layers"] - args.min_depth + 1
        n_configs = depths * len(lut.widths(settings[0]))
        timed = [r for r in partial if r["flow"] == flow and r["subnet"].startswith("r")]
        # one direct measurement = one pass over both phases of one subnet
        per_subnet = sum(r["wall_s"] for r in timed) / len({(r["subnet"], r["pass"]) for r in timed})
        per_flow.append({"flow": flow, "lut_seconds": float(measurements["wall_s"].sum()),
                         "lut_rows": len(measurements), "passes": lut.meta["design"]["passes"],
                         "n_configs": n_configs, "seconds_per_subnet": per_subnet,
                         "direct_seconds": n_configs * per_subnet, "direct_is_extrapolated": True})
    first = per_flow[0]
    summary = " ".join(
        f"{f['flow']}: LUT {f['lut_seconds'] / 60:.1f} min ({f['lut_rows']} rows, {f['passes']} passes) vs "
        f"{f['n_configs']} subnets x {f['seconds_per_subnet']:.1f} s = {f['direct_seconds'] / 60:.0f} min direct "
        f"(extrapolated), ratio {f['direct_seconds'] / f['lut_seconds']:.1f}x." for f in per_flow)
    results["profile_cost"] = {"lut_seconds": first["lut_seconds"], "direct_seconds": first["direct_seconds"],
                               "n_configs": first["n_configs"], "flow": first["flow"], "per_flow": per_flow,
                               "summary": summary}
    write_json_atomic(out_json, results)
    from predictor_accuracy import write_markdown

    write_markdown(results, out_json.with_suffix(".md"))
    print(summary)


if __name__ == "__main__":
    main()
