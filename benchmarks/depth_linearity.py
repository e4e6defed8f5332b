"""Claim checked: a block costs the same in a shallow timed model as in a deep subnet, so a profile may time each
width in one `--layers-per-row`-block model and add blocks up. If a block's marginal cost grows with depth (its
weights no longer stay in the last-level cache once the model is larger, say), composing from shallow rows
under-predicts deep subnets of narrow blocks, which is what heterogeneous subnets are made of.

For a few widths (MLP-only rows start with one lead block at the widest width, as the profiler's do), the model of
each depth in --depths is extracted and all are timed round-robin in --passes passes (each pass: the profiler's stop
rule); passes are combined by the profile's estimator. Reported per width: latency per depth, the marginal cost of
a block between consecutive depths, and the profile's block latency for that width.
Writes benchmarks/results/<--results>.{json,md} (default depth_linearity; device and flow inside):
benchmarks/results/depth_linearity.json/.md (intel-xeon torch-eager) come from `python depth_linearity.py
--passes 5`; benchmarks/results/depth_linearity-amd-epyc-llama.cpp.json/.md from `python depth_linearity.py --device
amd-epyc --flow llama.cpp --widths 3/384,6/1536,9/1536 --depths 6,12,18,24,30 --passes 5 --results
depth_linearity-amd-epyc-llama.cpp`."""

from __future__ import annotations

import argparse

from _common import RESULTS, setup

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.models import load_model
from amoeba_search.profiling.flows import FLOWS
from amoeba_search.profiling.harness import StopRule
from amoeba_search.profiling.load import load_warnings
from amoeba_search.profiling.profile import measure_model, reference_pairing, summarize_runs
from amoeba_search.profiling.store import ProfileStore
from amoeba_search.profiling.timed_models import block_model, lead_width


def parse_widths(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("/")) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="intel-xeon")
    parser.add_argument("--flow", default="torch-eager")
    parser.add_argument("--widths", default="3/384,0/768,9/1536", help="heads/MLP channels, comma list "
                                                                       "(heads 0: MLP-only)")
    parser.add_argument("--depths", default="4,8,16,24")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="depth_linearity", help="results file stem under benchmarks/results/ "
                                                                     "(one per device and flow)")
    args = parser.parse_args()
    command = setup(args.threads)
    loaded = load_model("default")
    lut = ProfileStore().load(args.device, args.flow)
    setting = lut.settings()[0]
    flow = FLOWS.get(args.flow)
    rule = StopRule(**lut.meta["design"]["stop_rule"])
    lead = lead_width(lut.widths(setting))
    depths = [int(d) for d in args.depths.split(",")]
    warnings = load_warnings(lut.meta["environment"])
    models = {(w, d): block_model(loaded.model, d, *w, lead=lead) for w in parse_widths(args.widths) for d in depths}
    runs: dict[tuple, list[dict]] = {key: [] for key in models}
    pairing = reference_pairing(flow, loaded.model, lut, setting)
    for index in range(args.passes):
        for key, model in models.items():
            runs[key].append(measure_model(flow, model, setting, rule, pairing.prepared if pairing else None))
            print(f"pass {index} {key[0]} x{key[1]:2d}: {runs[key][-1]['median_ms']:.3f} ms", flush=True)
    rows = []
    for width in parse_widths(args.widths):
        latency = {d: summarize_runs(runs[(width, d)], lut.estimator, pairing.level_ms if pairing else None)
                   for d in depths}
        marginal = [(latency[b]["measured_ms"] - latency[a]["measured_ms"]) / (b - a)
                    for a, b in zip(depths, depths[1:])]
        rows.append({"heads": width[0], "mlp": width[1], "profile_block_ms": lut.block_ms(setting, *width),
                     "latency_ms": {str(d): latency[d]["measured_ms"] for d in depths},
                     "p10_ms": {str(d): latency[d]["p10_ms"] for d in depths},
                     "p90_ms": {str(d): latency[d]["p90_ms"] for d in depths},
                     "marginal_block_ms": {f"{a}-{b}": m for (a, b), m in zip(zip(depths, depths[1:]), marginal)},
                     "deep_over_shallow": marginal[-1] / marginal[0] if marginal[0] > 0 else None})
    record = {"device": args.device, "flow": args.flow, "setting": setting.label(), "estimator": lut.estimator,
              "passes": args.passes, "lead_block": list(lead), "rows": rows, "load_warnings": warnings,
              "command": command, "environment": environment()}
    write_json_atomic(RESULTS / f"{args.results}.json", record)
    (RESULTS / f"{args.results}.md").write_text(markdown(record))
    print(markdown(record))


def markdown(record: dict) -> str:
    depths = list(record["rows"][0]["latency_ms"])
    pairs = list(record["rows"][0]["marginal_block_ms"])
    lines = [f"# Is a block's cost independent of depth? {record['device']} / {record['flow']}", "",
             f"`{record['command']}`; {record['setting']}, {record['passes']} round-robin passes combined by "
             f"{record['estimator']}; MLP-only models start with one {tuple(record['lead_block'])} block.", "",
             "| heads / MLP | " + " | ".join(f"{d} blocks ms" for d in depths) + " | "
             + " | ".join(f"block ms {p}" for p in pairs) + " | profile block ms | deep / shallow |",
             "|---" * (2 + len(depths) + len(pairs)) + "|---|"]
    for r in record["rows"]:
        ratio = r["deep_over_shallow"]
        lines.append(f"| {r['heads']} / {r['mlp']} | " + " | ".join(f"{r['latency_ms'][d]:.2f}" for d in depths)
                     + " | " + " | ".join(f"{r['marginal_block_ms'][p]:.3f}" for p in pairs)
                     + f" | {r['profile_block_ms']:.3f} | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", "Load warnings: " + ("; ".join(record["load_warnings"]) or "none"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
