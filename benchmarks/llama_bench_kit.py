"""Claim: a device without amoeba_search can be profiled with llama.cpp's own llama-bench: the kit written by
`amoeba profile kit` (GGUF set + run.sh), run here with a llama-bench built from the same llama.cpp release as
llama-cpp-python, imports into a profile whose predictions are within 5% of the native llama.cpp profile's
(`amoeba profile --flow llama.cpp` on this machine), for random uniform and heterogeneous subnets. With
--native-passes N the native profile is re-timed in the same run, pass by pass between the kit's passes, so the
comparison is about the two tools and not about how the shared machine drifted between two runs.

Needs a llama-bench binary (--llama-bench, or $AMOEBA_LLAMA_BENCH; `make llama-bench` builds one). Writes
benchmarks/results/llama_bench_kit.{json,md}."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import RESULTS, setup

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.models import load_model
from amoeba_search.profiling.llama_bench import write_kit
from amoeba_search.profiling.load import load_warnings
from amoeba_search.profiling.lut import LookupTable
from amoeba_search.profiling.predictor import Predictor
from amoeba_search.profiling.harness import StopRule
from amoeba_search.profiling.profile import WidthGrid, build_profile, import_profile
from amoeba_search.profiling.store import ProfileStore
from amoeba_search.families.base import model_dims


def random_widths(table: LookupTable, setting, layers: int, rng: random.Random, heterogeneous: bool) -> list:
    widths = table.widths(setting)
    depth = rng.randint(layers // 2, layers)
    if heterogeneous:
        return [rng.choice(widths) for _ in range(depth)]
    return [rng.choice([w for w in widths if w[0] > 0])] * depth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-bench", default=os.environ.get("AMOEBA_LLAMA_BENCH", "llama-bench"))
    parser.add_argument("--device", default="intel-xeon", help="the native llama.cpp profile of this machine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subnets", type=int, default=40)
    parser.add_argument("--passes", type=int, default=5, help="llama-bench passes over the kit's models")
    parser.add_argument("--native-passes", type=int, default=0,
                        help="re-time the native profile in this run: one native pass right before each kit pass "
                             "(the same minutes, so a shared machine's drift hits both alike; replaces --passes); "
                             "0: compare with the committed native profile")
    parser.add_argument("--layers-per-row", type=int, default=None,
                        help="with --native-passes: blocks per timed model of both (default: the committed "
                             "profile's)")
    parser.add_argument("--estimator", choices=("median", "quiet"), default="quiet",
                        help="how both profiles combine a model's passes (llama-bench cannot time two models in "
                             "turns, so not `paired`; with --native-passes 0 the committed profile's own is used)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = setup(args.threads)
    loaded = load_model("default")
    committed = LookupTable.load(ProfileStore().directory(args.device, "llama.cpp"))
    native = committed                   # what the kit is compared with: re-timed below with --native-passes
    design = committed.meta["design"]
    dims = model_dims(loaded.model.config)
    grid = WidthGrid.from_design(design)
    settings = committed.settings()
    warnings = load_warnings(committed.meta["environment"])
    layers = args.layers_per_row or design["layers_per_row"]
    interleaved = args.native_passes > 0
    estimator = args.estimator if interleaved else committed.estimator
    if estimator == "paired":
        raise SystemExit(f"{committed.name} is a `paired` profile and llama-bench cannot time in turns with its "
                         "reference: re-time the native rows in this run with --native-passes N")
    with tempfile.TemporaryDirectory() as tmp:
        kit = write_kit(loaded, Path(tmp) / "kit", "kit-here", settings, grid, layers,
                        passes=1 if interleaved else args.passes, repetitions=10, threads=args.threads)
        bench_seconds, results = 0.0, []
        for pass_index in range(args.native_passes or 1):
            if interleaved:                                  # the native rows of this pass, then the kit's
                print(f"pass {pass_index + 1}/{args.native_passes}: native profile rows", flush=True)
                native = build_profile(loaded, Path(tmp) / "native" / "llama.cpp", "native-here", "llama.cpp",
                                       settings, grid, layers, StopRule(**design["stop_rule"]),
                                       passes=pass_index + 1, progress=False, estimator=estimator,
                                       block_fit=committed.block_fit)
                print(f"pass {pass_index + 1}/{args.native_passes}: llama-bench", flush=True)
            started = time.perf_counter()
            subprocess.run([str(kit / "run.sh")], check=True, env={**os.environ, "LLAMA_BENCH": args.llama_bench})
            bench_seconds += time.perf_counter() - started
            results.append((kit / "results.jsonl").read_text())
        (kit / "results.jsonl").write_text("".join(results))             # every pass: the import combines them
        imported = import_profile(loaded, kit / "results.jsonl", ProfileStore(Path(tmp) / "profiles"), "kit-here",
                                  "llama.cpp", estimator=estimator, block_fit=native.block_fit)
        rows, rng = [], random.Random(0)
        for setting in settings:
            kit_setting = imported.setting(setting.phase, setting.tokens, setting.batch, setting.dtype)
            for heterogeneous in (False, True):
                errors = []
                for _ in range(args.subnets):
                    widths = random_widths(native, setting, dims.num_layers, rng, heterogeneous)
                    ours = Predictor(native, use_correction=False).predict_ms(setting, widths)
                    theirs = Predictor(imported, use_correction=False).predict_ms(kit_setting, widths)
                    errors.append(100 * (theirs - ours) / ours)
                rows.append({"phase": setting.phase, "tokens": setting.tokens, "dtype": setting.dtype,
                             "subnets": "heterogeneous" if heterogeneous else "uniform", "n": len(errors),
                             "mape_pct": round(statistics.mean(abs(e) for e in errors), 2),
                             "median_diff_pct": round(statistics.median(errors), 2),
                             "within_5_pct": round(100 * sum(abs(e) <= 5 for e in errors) / len(errors), 1),
                             "native_base_ms": round(native.base_ms(setting), 4),
                             "kit_base_ms": round(imported.base_ms(kit_setting), 4)})
    record = {"rows": rows, "details": {"command": command, "environment": environment(), "device": args.device,
                                       "llama_bench": args.llama_bench, "llama_bench_seconds": round(bench_seconds),
                                       "load_warnings": warnings, "passes": args.native_passes or args.passes,
                                       "native": "re-timed in this run, interleaved with the kit's passes"
                                                 if interleaved else "the committed profile",
                                       "layers_per_row": layers,
                                       "estimator": native.estimator, "block_fit": native.block_fit,
                                       "compared": "predictions (base + sum of blocks, no correction) of the same "
                                                   "random subnets from both profiles"}}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "llama_bench_kit.json", record)
    native_what = (f"native profile re-timed in this run, one pass right before each of the kit's {args.native_passes} "
                   f"passes" if interleaved else f"native profile `{args.device}/llama.cpp` (committed)")
    lines = ["# llama-bench kit vs native llama.cpp profile", "", f"`{command}`; {native_what}; {layers}-block rows; "
             f"llama-bench `{args.llama_bench}` ({bench_seconds:.0f} s for the kit's "
             f"{args.native_passes or args.passes} passes); "
             f"both profiles: {native.estimator} estimator, {native.block_fit} block fit. "
             "Difference = kit-profile prediction vs native-profile prediction of the same random subnet.", "",
             "| phase | tokens | dtype | subnets | n | MAPE % | median diff % | within ±5% | base ms native / kit |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['tokens']} | {r['dtype']} | {r['subnets']} | {r['n']} | {r['mape_pct']} | "
              f"{r['median_diff_pct']} | {r['within_5_pct']}% | {r['native_base_ms']} / {r['kit_base_ms']} |"
              for r in rows]
    lines += ["", "Load warnings: " + ("; ".join(warnings) or "none")]
    (args.results / "llama_bench_kit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
