"""Claim: a subnet's latency composed from the lookup table (base + Σ block) matches its directly measured
latency: MAPE ≤ 5% for prefill and decode on every measured CPU flow.

For each flow profiled under device_profiles/<device>/, --n random subnets (depth 10..30, random layers, one
uniform width from the table's grid; the same subnets for every flow) are extracted and timed end to end with the
flow's own step and the profiler's stop rule. If composition alone misses 5%, a two-term correction
(block_scale * Σ block + base_scale * base) is fitted by least squares; its error is scored by 2-fold
cross-validation, so no subnet is scored by a correction fitted on it. Only where the cross-validated correction
beats composition is the correction fitted on all subnets saved as the profile's correction.json (the search then
uses it); every subnet's figures go to validation.csv.
Also measured: the full model, a 50%-depth subnet (15 layers, full width) and a 50%-width subnet (30 layers,
6 of 9 heads, half the MLP channels), to show that the flows rank shapes differently.
Resumable: measured rows are kept in results/<name>.partial.jsonl.
Writes benchmarks/results/<name>.json (rows) and <name>.md; --results NAME (default predictor) keeps one file per
device. The GPU results, benchmarks/results/predictor-nvidia-h100-80gb-hbm3.json/.md, come from
`python benchmarks/predictor_accuracy.py --device nvidia-h100-80gb-hbm3 --flows cuda-eager,cuda-graphs
--results predictor-nvidia-h100-80gb-hbm3 --threads 8 --flow-passes cuda-eager=2` on a lent H100. This project's
2-core Intel Xeon VM's llama.cpp profile, benchmarks/results/predictor-intel-xeon.json/.md, comes from
`python benchmarks/predictor_accuracy.py --device intel-xeon --flows llama.cpp --passes 2 --results
predictor-intel-xeon`. Its torch-eager profile re-measured with 20-block rows (the shipped one since),
benchmarks/results/predictor-intel-xeon-l20.json/.md, comes from `python benchmarks/predictor_accuracy.py --device
intel-xeon --flows torch-eager --passes 3 --interleave-profile --layers-per-row 20 --estimator quiet --results
predictor-intel-xeon-l20`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
from pathlib import Path

import pandas as pd
from _common import RESULTS, setup

from amoeba_search.artifacts import environment, read_json, write_json_atomic
from amoeba_search.extract import extract_model
from amoeba_search.models import load_model
from amoeba_search.profiling.flows import FLOWS
from amoeba_search.profiling.harness import StopRule
from amoeba_search.profiling.lut import (BLOCK_FITS, ESTIMATORS, LookupTable, MeasurementLog, Setting, combine_runs,
                                         pass_tails_pct, reference_level)
from amoeba_search.profiling.predictor import Correction, Predictor, save_corrections, setting_key, subnet_widths
from amoeba_search.profiling.profile import WidthGrid, build_profile, measure_model, reference_pairing
from amoeba_search.profiling.store import ProfileStore
from amoeba_search.subnet import ModelDims, Subnet, canonical_heads

TARGET_MAPE = 5.0


def random_subnets(dims: ModelDims, widths: list[tuple[int, int]], n: int, seed: int) -> dict[str, Subnet]:
    rng = random.Random(seed)
    subnets = {}
    for i in range(n):
        depth = rng.randint(10, dims.num_layers)
        heads, mlp = rng.choice(widths)
        layers = sorted(rng.sample(range(dims.num_layers), depth))
        subnets[f"r{i:02d}"] = Subnet.uniform(dims, layers, heads=heads, mlp=mlp)
    return subnets


def random_heterogeneous_subnets(dims: ModelDims, widths: list[tuple[int, int]], n: int,
                                 seed: int) -> dict[str, Subnet]:
    """Per-layer shapes as `search --space heterogeneous` hands them over: each layer removed (5-40%) or at its own
    (heads, MLP) from the table, MLP-only (heads 0) included; the first kept layer keeps attention (llama.cpp
    reads the head size from it). Which heads/channels are kept does not change latency."""
    rng = random.Random(seed)
    attention = [w for w in widths if w[0] > 0]
    subnets = {}
    for i in range(n):
        removal = rng.uniform(0.05, 0.4)
        layers = [j for j in range(dims.num_layers) if rng.random() >= removal] or [0]
        shapes = [rng.choice(attention)] + [rng.choice(widths) for _ in layers[1:]]
        subnets[f"h{i:02d}"] = Subnet(tuple(layers), tuple(canonical_heads(dims, h) for h, _ in shapes),
                                      tuple(tuple(range(m)) for _, m in shapes))
    return subnets


def shape_subnets(dims: ModelDims) -> dict[str, Subnet]:
    half = dims.num_layers // 2
    return {"full": Subnet.full(dims),
            "depth50": Subnet.uniform(dims, range(half)),
            "width50": Subnet.uniform(dims, range(dims.num_layers), heads=2 * dims.num_heads // 3,
                                      mlp=dims.intermediate_size // 2)}


def load_partial(partial: Path) -> dict[tuple, dict]:
    if not partial.is_file():
        return {}
    rows = {}
    for line in partial.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue                                  # a line cut by a kill: measured again
        rows[(row["flow"], row["subnet"], row["setting"], row["pass"])] = row
    return rows


def measure_all(loaded, flow: str, settings: list[Setting], subnets: dict[str, Subnet], rule: StopRule,
                passes: int, done: dict, partial: Path, profile_dir: Path, before_pass=None,
                estimator: str = "median") -> list[dict]:
    """Time every subnet in `passes` round-robin passes (as the profiler does) at each of `settings`; a subnet's
    passes are combined by the profile's estimator (lut.ESTIMATORS), as its rows were (`paired`: each timing in
    turns with the profile's reference model, stated at the profile's final reference level). `before_pass(p)`
    runs first in each pass (the interleaved profile's rows)."""
    references = {}

    def reference(setting: Setting):
        if estimator == "paired" and setting not in references:    # the profile's reference, once its meta exists
            references[setting] = reference_pairing(FLOWS.get(flow), loaded.model, LookupTable.load(profile_dir),
                                                    setting).prepared
        return references.get(setting)

    for pass_index in range(passes):
        if before_pass is not None:
            before_pass(pass_index)
        for name, subnet in subnets.items():
            pending = [s for s in settings if (flow, name, setting_key(s), pass_index) not in done]
            model = extract_model(loaded.model, subnet) if pending else None
            for setting in pending:
                measured = measure_model(FLOWS.get(flow), model, setting, rule, reference(setting))
                row = {"flow": flow, "subnet": name, "setting": setting_key(setting), "pass": pass_index,
                       "phase": setting.phase, "layers": len(subnet.layers), "widths": subnet_widths(subnet)[0],
                       "layer_widths": subnet_widths(subnet),
                       "measured_ms": measured["median_ms"], "p10_ms": measured["p10_ms"],
                       "p90_ms": measured["p90_ms"], "wall_s": measured["wall_s"],
                       **({"ref_median_ms": measured["ref_median_ms"]} if "ref_median_ms" in measured else {})}
                with open(partial, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                done[(flow, name, setting_key(setting), pass_index)] = row
                print(f"{flow:14s} pass {pass_index} {name:8s} {setting.phase:8s} L={row['layers']:2d} "
                      f"w={row['widths']} {row['measured_ms']:.2f} ms", flush=True)
    profile_rows = MeasurementLog(profile_dir).read() if estimator == "paired" else None
    levels = {setting: None if profile_rows is None else reference_level(profile_rows, setting)
              for setting in settings}          # one lookup per setting, not per subnet
    combined = []
    for name in subnets:
        for setting in settings:
            runs = [done[(flow, name, setting_key(setting), p)] for p in range(passes)]
            latency = combine_runs([{"median_ms": r["measured_ms"], "p10_ms": r["p10_ms"],
                                     "ref_median_ms": r.get("ref_median_ms")} for r in runs], estimator,
                                   levels[setting])
            combined.append({**runs[0], "measured_ms": latency,
                             "pass_spread_pct": 100 * (max(r["measured_ms"] for r in runs) - min(
                                 r["measured_ms"] for r in runs)) / statistics.median(r["measured_ms"] for r in runs),
                             "wall_s": sum(r["wall_s"] for r in runs)})
    return combined


def interleaved_profile(loaded, lut: LookupTable, settings: list[Setting], grid: WidthGrid, fresh: bool,
                        estimator: str, layers_per_row: int | None = None, block_fit: str | None = None):
    """Re-measure the profile's rows at `settings` and `grid` pass by pass, each pass right before the same
    validation pass, so a slow drift of a shared machine moves the table and the subnets it is checked against
    alike; `layers_per_row` and `block_fit` (default: the profile's) set the depth of the timed models and the
    block fit of a fresh profile."""
    design = lut.meta["design"]
    layers = layers_per_row or design["layers_per_row"]
    rule = StopRule(**design["stop_rule"])

    def before_pass(pass_index: int) -> None:
        print(f"{lut.meta['flow']:14s} pass {pass_index}: profile rows", flush=True)
        build_profile(loaded, lut.directory, lut.meta["device"], lut.meta["flow"], settings, grid,
                      layers, rule, passes=pass_index + 1,
                      overwrite=fresh and pass_index == 0, progress=False, estimator=estimator,
                      block_fit=block_fit or lut.block_fit)
    return before_pass


def score(errors_pct: list[float]) -> dict:
    absolute = [abs(e) for e in errors_pct]
    return {"mape_pct": statistics.fmean(absolute), "max_err_pct": max(absolute),
            "within_5_pct": 100 * sum(a <= 5 for a in absolute) / len(absolute),
            "within_10_pct": 100 * sum(a <= 10 for a in absolute) / len(absolute)}


def evaluate_flow(lut: LookupTable, rows: list[dict], space: str = "uniform",
                  fitted: dict | None = None) -> tuple[list[dict], dict, list[dict]]:
    """Composed and (if needed) cross-validated corrected errors per phase; returns result rows, the corrections
    fitted on all subnets, and per-subnet records. `fitted` (the uniform subnets' corrections): scored as they
    are on these held-out subnets instead of fitting new ones (heterogeneous subnets)."""
    predictor = Predictor(lut, use_correction=False)
    results, corrections, records = [], {}, []
    for setting in lut.settings():
        group = [r for r in rows if r["setting"] == setting_key(setting)]
        parts = [predictor.parts_ms(setting, [tuple(w) for w in r.get("layer_widths") or
                                              [r["widths"]] * r["layers"]]) for r in group]
        measured = [r["measured_ms"] for r in group]
        composed = [base + blocks for base, blocks in parts]
        errors = [100 * (p - m) / m for p, m in zip(composed, measured)]
        common = {"device": lut.meta["device"], "flow": lut.meta["flow"], "space": space, "phase": setting.phase,
                  "tokens": setting.tokens, "dtype": setting.dtype, "n_subnets": len(group)}
        results.append({**common, **score(errors), "corrected": False})
        corrected = [None] * len(group)
        if fitted is not None:
            if setting_key(setting) in fitted:
                corrected = [fitted[setting_key(setting)].apply(*part) for part in parts]
                results.append({**common, **score([100 * (c - m) / m for c, m in zip(corrected, measured)]),
                                "corrected": True})
        elif score(errors)["mape_pct"] > TARGET_MAPE:
            folds = [list(range(0, len(group), 2)), list(range(1, len(group), 2))]
            for fit_on, test_on in (folds, folds[::-1]):
                fit = Correction.fit([parts[i][0] for i in fit_on], [parts[i][1] for i in fit_on],
                                     [measured[i] for i in fit_on])
                for i in test_on:
                    corrected[i] = fit.apply(*parts[i])
            cv_errors = [100 * (c - m) / m for c, m in zip(corrected, measured)]
            results.append({**common, **score(cv_errors), "corrected": True})
            if score(cv_errors)["mape_pct"] < score(errors)["mape_pct"]:    # keep it only where it helps
                corrections[setting_key(setting)] = Correction.fit([p[0] for p in parts], [p[1] for p in parts],
                                                                   measured)
        records += [{"subnet": r["subnet"], "space": space, "phase": setting.phase, "tokens": setting.tokens,
                     "layers": r["layers"], "heads": r["widths"][0] if space == "uniform" else "",
                     "mlp": r["widths"][1] if space == "uniform" else "", "measured_ms": m, "composed_ms": c,
                     "corrected_cv_ms": k} for r, m, c, k in zip(group, measured, composed, corrected)]
    return results, corrections, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, help="profile name under device_profiles/")
    parser.add_argument("--flows", default="torch-eager,torch-compile,onnxruntime,llama.cpp")
    parser.add_argument("--n", type=int, default=20, help="random subnets per flow (>= 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=3, help="round-robin passes per subnet (median of medians)")
    parser.add_argument("--flow-passes", default="", help="per-flow override, e.g. onnxruntime=2 (slow exports)")
    parser.add_argument("--hetero", type=int, default=20,
                        help="random heterogeneous subnets per flow (per-layer widths, MLP-only layers), timed in "
                             "the same passes and scored with the uniform subnets' predictor (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="predictor", help="results file stem under benchmarks/results/")
    parser.add_argument("--interleave-profile", action="store_true",
                        help="re-measure each flow's profile pass by pass, interleaved with the validation passes "
                             "(a fresh profile when the partial file has no rows of the flow; else both resume)")
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default=None,
                        help="how a model's passes become one latency, for the profile (with --interleave-profile) "
                             "and the subnets alike; default: the profile's own")
    parser.add_argument("--layers-per-row", type=int, default=None,
                        help="with --interleave-profile: blocks per timed model of the fresh profile (default: the "
                             "profile's own)")
    parser.add_argument("--mlp-only-layers", action="store_true",
                        help="with --interleave-profile: the fresh profile also times MLP-only blocks (heads 0), "
                             "which heterogeneous search and its random validation subnets use")
    parser.add_argument("--block-fit", choices=sorted(BLOCK_FITS), default=None,
                        help="with --interleave-profile: the fresh profile's block fit (default: the profile's own)")
    parser.add_argument("--phases", default=None,
                        help="with --interleave-profile: phases of the fresh profile, e.g. decode,prefill, at the "
                             "profile's tokens and dtype (default: the profile's own settings)")
    args = parser.parse_args()
    command = setup(args.threads)
    out_json, partial = RESULTS / f"{args.results}.json", RESULTS / f"{args.results}.partial.jsonl"
    loaded = load_model("default")
    dims = ModelDims.from_config(loaded.model.config)
    done = load_partial(partial)
    out_rows, shapes, details, passes = [], [], {}, {}
    flows = args.flows.split(",")
    for flow in flows:
        lut = ProfileStore().load(args.device, flow)
        if lut.meta.get("model") != loaded.fingerprint:
            raise SystemExit(f"{lut.name} was profiled for another model")
        grid = WidthGrid.from_design(lut.meta["design"])
        if args.mlp_only_layers or args.block_fit:
            if not args.interleave_profile:
                raise SystemExit("--mlp-only-layers / --block-fit set a fresh profile's design: add "
                                 "--interleave-profile")
            grid = dataclasses.replace(grid, mlp_only=grid.mlp_only or args.mlp_only_layers)
        widths = [w for w in grid.widths() if w[0] > 0]                    # uniform subnets keep attention
        subnets = {**random_subnets(dims, widths, args.n, args.seed), **shape_subnets(dims),
                   **random_heterogeneous_subnets(dims, grid.widths(), args.hetero, args.seed)}
        overrides = dict(item.split("=") for item in args.flow_passes.split(",") if item)
        passes[flow] = int(overrides.get(flow, args.passes))
        estimator = args.estimator or lut.estimator
        if estimator != lut.estimator and not args.interleave_profile:
            raise SystemExit(f"--estimator {estimator}: {lut.name} was fitted with another; add --interleave-profile")
        settings = lut.settings()
        if args.phases:
            if not args.interleave_profile:
                raise SystemExit("--phases sets a fresh profile's phases: add --interleave-profile")
            settings = sorted({Setting(phase, s.tokens, s.batch, s.dtype) for s in settings
                               for phase in args.phases.split(",")}, key=setting_key)
        before_pass = None
        if args.interleave_profile:
            before_pass = interleaved_profile(loaded, lut, settings, grid, not any(key[0] == flow for key in done),
                                              estimator, args.layers_per_row, args.block_fit)
        rows = measure_all(loaded, flow, settings, subnets, StopRule(), passes[flow], done, partial, lut.directory,
                           before_pass, estimator)
        lut = LookupTable.load(lut.directory)                   # the interleaved profile's final fit
        random_rows = [r for r in rows if r["subnet"].startswith("r")]
        results, corrections, records = evaluate_flow(lut, random_rows)
        hetero_rows = [r for r in rows if r["subnet"].startswith("h")]
        if hetero_rows:
            hetero_results, _, hetero_records = evaluate_flow(lut, hetero_rows, "heterogeneous", corrections)
            results, records = results + hetero_results, records + hetero_records
        out_rows += results
        if corrections:
            save_corrections(lut.directory, corrections, fitted_on=args.n)
        else:
            (lut.directory / "correction.json").unlink(missing_ok=True)
        pd.DataFrame(records).to_csv(lut.directory / "validation.csv", index=False, float_format="%.4f")
        measured_in = environment()
        details[flow] = {"pass_spread_pct_median": statistics.median(r["pass_spread_pct"] for r in random_rows),
                         "estimator": estimator, "block_fit": lut.block_fit,
                         "profile_pass_tails_pct": pass_tails_pct(MeasurementLog(lut.directory).read()),
                         "layers_per_row": lut.meta["design"]["layers_per_row"],
                         "profile_interleaved": args.interleave_profile, "command": command,
                         "date": measured_in["date"], "host": measured_in["machine"]}
        by = {(r["subnet"], r["phase"]): r["measured_ms"] for r in rows}
        for setting in lut.settings():
            full = by[("full", setting.phase)]
            shapes.append({"flow": flow, "phase": setting.phase, "dtype": setting.dtype, "full_ms": full,
                           "depth50_ms": by[("depth50", setting.phase)], "width50_ms": by[("width50", setting.phase)],
                           "depth50_over_width50": by[("depth50", setting.phase)] / by[("width50", setting.phase)]})
    existing = read_json(out_json, "results", "") if out_json.is_file() else {}

    def others(key: str) -> list:                 # results of flows this run did not measure are kept
        return [r for r in existing.get(key, []) if r["flow"] not in flows]

    payload = {**existing, "rows": others("rows") + out_rows, "shapes": others("shapes") + shapes,
               "flow_costs": {**existing.get("flow_costs", {}), **details}, "command": command,
               "subnets": {"random": args.n, "seed": args.seed, "depth": "10..30", "width": "uniform, from the grid",
                           "heterogeneous": args.hetero,
                           "passes": {**existing.get("subnets", {}).get("passes", {}), **passes}},
               "shape_params": {"depth50": "15 layers x full width", "width50": "30 layers x 6/9 heads x 50% MLP"},
               "environment": environment()}
    write_json_atomic(out_json, payload)
    print(write_markdown(payload, out_json.with_suffix(".md")))


def write_markdown(payload: dict, path: Path) -> str:
    env = payload["environment"]
    lines = ["# Latency predictor accuracy", "",
             f"Devices: {', '.join(sorted({r['device'] for r in payload['rows']}))}; host CPU {env['machine']}, "
             f"{env['torch_threads']} threads, torch {env['torch']}, transformers "
             f"{env['transformers']}, batch 1, {env['date']}. Commands: "
             + "; ".join(sorted({f"`{d.get('command', payload['command'])}`" for d in payload["flow_costs"].values()}))
             + ".", "",
             f"{payload['subnets']['random']} random extracted subnets per flow (depth 10..30, random layers, uniform "
             "width from the table's grid), each timed end to end in round-robin passes ("
             + ", ".join(f"{f}: {n}" for f, n in payload["subnets"]["passes"].items())
             + "; passes combined by the estimator below; each pass: stop "
             "rule ±2% at 95% or 10 s), as the profiler times its rows. "
             "Composed = base + Σ block from the lookup table. Corrected = two-term least-squares correction, "
             "2-fold cross-validated (never scored on the subnets it was fitted on); only fitted when composed "
             "MAPE > 5%."
             + (f" Heterogeneous: {payload['subnets']['heterogeneous']} random subnets per flow with a shape per layer "
                "(each layer removed with a random 5-40% chance, else at its own (heads, MLP) from the table, MLP-only "
                "included), timed in the same passes and scored with the predictor fitted on the uniform ones."
                if payload["subnets"].get("heterogeneous") else ""), "",
             "| device | flow | space | dtype | phase | tokens | n | predictor | MAPE % | max err % | within ±5% | "
             "within ±10% |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['device']} | {r['flow']} | {r.get('space', 'uniform')} | {r['dtype']} | {r['phase']} | "
                     f"{r['tokens']} | "
                     f"{r['n_subnets']} | "
                     f"{'corrected (CV)' if r['corrected'] else 'composed'} | {r['mape_pct']:.2f} | "
                     f"{r['max_err_pct']:.2f} | {r['within_5_pct']:.0f}% | {r['within_10_pct']:.0f}% |")
    lines += ["", "Median spread between a subnet's passes ((max - min) / median), the measurement noise the "
              "predictor is scored against: " + ", ".join(f"{flow} {d['pass_spread_pct_median']:.1f}%"
                                                           for flow, d in payload["flow_costs"].items()) + ".",
              "", "When and where each flow was measured (flows are re-run one at a time, so the header's host and date "
              "are the last run's): " + ", ".join(f"{flow} {d.get('date', 'date not recorded')} on "
                                                  f"{d.get('host', 'host not recorded')}"
                                                  for flow, d in payload["flow_costs"].items()) + ".",
              "", "Passes combined by (lut.ESTIMATORS; the profile and its subnets alike): " + ", ".join(
                  f"{flow} {d.get('estimator', 'median')}" for flow, d in payload["flow_costs"].items()) + ".",
              "", "How far the profile rows' passes reach below / above their middle pass (p10, median over rows; "
              "`quiet` assumes interference only adds time, i.e. the slow side is the wider; lut.pass_tails_pct): "
              + ", ".join(f"{flow} {phase} {t['below_pct']:.1f} / {t['above_pct']:.1f}%"
                          for flow, d in payload["flow_costs"].items()
                          for phase, t in d.get("profile_pass_tails_pct", {}).items()) + ".",
              "", "Block fit (lut.BLOCK_FITS: linear = every width's block on one least-squares plane in "
              "(attention, heads, MLP channels); per-width = one free value each): " + ", ".join(
                  f"{flow} {d.get('block_fit', 'per-width')}" for flow, d in payload["flow_costs"].items()) + ".",
              "", "Profiles re-measured pass by pass, interleaved with the validation passes (same time window, "
              "so machine drift cancels): " + (", ".join(f for f, d in payload["flow_costs"].items()
                                                      if d.get("profile_interleaved")) or "none") + "; the others "
              "were profiled in a separate run before validation.",
              "", "## Which shape is faster depends on the flow", "",
              "Measured latency of the full model, a 50%-depth subnet (15 of 30 layers, full width) and a 50%-width "
              "subnet (30 layers, 6 of 9 heads, 768 of 1536 MLP channels).", "",
              "| flow | dtype | phase | full ms | 50%-depth ms | 50%-width ms | depth50 / width50 |",
              "|---|---|---|---|---|---|---|"]
    for s in payload["shapes"]:
        lines.append(f"| {s['flow']} | {s['dtype']} | {s['phase']} | {s['full_ms']:.2f} | {s['depth50_ms']:.2f} | "
                     f"{s['width50_ms']:.2f} | {s['depth50_over_width50']:.3f} |")
    if "profile_cost" in payload:
        c = payload["profile_cost"]
        lines += ["", "## Cost of a lookup table vs measuring every subnet", "", c["summary"]]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


if __name__ == "__main__":
    main()
