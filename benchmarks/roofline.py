"""Claim: we know how far each flow is from this machine's physical limits, and the roofline estimator used for
devices we cannot reach is checked against measurement where we can measure (this CPU, and a CUDA GPU when lent).

1. Measures the device's memory bandwidth (STREAM-style copy: 512 MiB on CPU, 2 GiB on a GPU) and matrix-multiply
   peak in the measured table's dtype (2048^3 on CPU, 8192^3 on a GPU), pinned threads, synchronised on CUDA;
   writes them as device_profiles/specs/<device>.json.
2. For the full embedded model, per flow and phase (measured latencies from benchmarks/predictor_accuracy.py):
   the compute-bound time (FLOPs / GEMM peak) and bandwidth-bound time (bytes / copy bandwidth), each as a
   percentage of the measured time.
3. Estimator error: the pure roofline (efficiency 1, no overhead) and the calibrated one (efficiencies and
   overheads fitted to the measured --flow table), each scored against every block and base entry of the
   measured table; the calibrated one by 2-fold cross-validation over widths (never scored on what it was fitted on).
Writes benchmarks/results/roofline.json and roofline.md (--results names them). The GPU results,
benchmarks/results/roofline-nvidia-h100-80gb-hbm3.json/.md, come from `python benchmarks/roofline.py --device
nvidia-h100-80gb-hbm3 --flow cuda-graphs --results roofline-nvidia-h100-80gb-hbm3 --predictor-results
predictor-nvidia-h100-80gb-hbm3 --threads 8` on a lent H100; --report-only re-renders a .md from its .json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from _common import RESULTS, setup

from amoeba_search.artifacts import environment, read_json, write_json_atomic
from amoeba_search.models import load_model
from amoeba_search.profiling.flows import FLOWS
from amoeba_search.profiling.lut import LookupTable
from amoeba_search.profiling.store import ProfileStore
from amoeba_search.profiling.roofline import DeviceSpec, base_work, block_work, calibrate, seconds
from amoeba_search.subnet import ModelDims

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int, device: str) -> list[float]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def copy_mib(device: str) -> int:
    """Size of the bandwidth copy: well past the caches (a GPU's L2 is ~50 MB, this CPU's L3 a few tens)."""
    return 2048 if device == "cuda" else 512


def memory_bandwidth_gbs(repeats: int, device: str) -> dict:
    src = torch.rand(copy_mib(device) * 2**20 // 4, device=device)             # fp32
    dst = torch.empty_like(src)
    samples = timed(lambda: dst.copy_(src), repeats, device)
    moved = 2 * src.numel() * 4                     # read + write
    return {"median": moved / statistics.median(samples) / 1e9, "best": moved / min(samples) / 1e9,
            "copy_mib": copy_mib(device)}


def matmul_tflops(repeats: int, device: str, dtype: str) -> dict:
    n = 8192 if device == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    samples = timed(lambda: a @ b, repeats, device)
    flops = 2 * n**3
    return {"median": flops / statistics.median(samples) / 1e12, "best": flops / min(samples) / 1e12, "n": n,
            "dtype": dtype}


SPEC_OF = {"RTX A5000": "a5000", "Jetson Orin NX 16GB": "jetson-orin-nx-16gb"}


def published_check(data_dir: Path) -> list[dict]:
    """The shipped GPU specs against the paired llama-bench rows of ../shared/data/devices (same method on both
    devices): decode = GGUF bytes / usable bandwidth, prefill = 2 x params FLOPs per token / usable compute.
    The efficiencies came from the dense 12B rows, so those match by construction; the other rows test them."""
    import csv
    import re

    from amoeba_search.profiling.roofline import load_spec

    path = data_dir / "devices" / "published_llm_throughput.csv"
    if not path.is_file():
        return []
    out = []
    for row in csv.DictReader(open(path)):
        size = re.search(r"\(([\d.]+) GiB\)", row["dtype_or_quant"])
        spec_name = next((v for k, v in SPEC_OF.items() if row["device"].startswith(k)), None)
        if "little-gemma docs/benchmarks.md" not in row["source"] or not size or spec_name is None:
            continue
        spec = load_spec(spec_name)
        if row["phase"] == "decode":
            seconds_per_token = float(size.group(1)) * 2**30 / (spec.memory_bandwidth_gbs * 1e9 *
                                                                 spec.efficiency["bandwidth"])
        else:
            seconds_per_token = 2 * float(row["params_b"]) * 1e9 / (spec.peak_tflops["float16"] * 1e12 *
                                                                   spec.efficiency["compute"])
        published = float(row["tokens_per_s"])
        out.append({"device": spec_name, "model": row["model"], "phase": row["phase"], "published_tok_s": published,
                    "estimate_tok_s": 1 / seconds_per_token,
                    "err_pct": 100 * (1 / seconds_per_token - published) / published})
    return out


def entry_errors(spec: DeviceSpec, lut: LookupTable, dims: ModelDims, vocab: int, widths_of) -> list[dict]:
    rows = []
    for s in lut.settings():
        targets = [(None, lut.base_ms(s))] + [(w, lut.block_ms(s, *w)) for w in widths_of(s)]
        for w, measured in targets:
            work = base_work(dims, vocab, s) if w is None else block_work(dims, *w, s)
            overhead = spec.overhead_ms.get("per_call" if w is None else "per_block", 0.0)
            estimate = 1e3 * seconds(work, spec, s.dtype) + overhead
            rows.append({"phase": s.phase, "entry": "base" if w is None else f"{w[0]}h/{w[1]}",
                         "measured_ms": measured, "estimate_ms": estimate,
                         "err_pct": 100 * (estimate - measured) / measured})
    return rows


def summarize_errors(rows: list[dict]) -> dict:
    out = {}
    for phase in sorted({r["phase"] for r in rows}):
        errors = [abs(r["err_pct"]) for r in rows if r["phase"] == phase]
        out[phase] = {"mape_pct": statistics.fmean(errors), "max_err_pct": max(errors), "n": len(errors)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="this machine's profile name under device_profiles/ (required to measure)")
    parser.add_argument("--flow", default="torch-eager", help="measured table to check and calibrate against")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--results", default="roofline", help="results file stem under benchmarks/results/")
    parser.add_argument("--predictor-results", default="predictor", help="stem predictor_accuracy.py wrote")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--report-only", action="store_true", help="re-render <results>.md from <results>.json")
    args = parser.parse_args()
    if args.report_only:
        print(write_markdown(read_json(RESULTS / f"{args.results}.json", "roofline results", "run this script"),
                             RESULTS / f"{args.results}.md"))
        return
    if not args.device:
        parser.error("--device is required (unless --report-only)")
    command = setup(args.threads)
    store = ProfileStore()
    table = store.load(args.device, args.flow)
    runs_on, dtype = FLOWS.get(args.flow).device, table.settings()[0].dtype
    bandwidth, gemm = memory_bandwidth_gbs(args.repeats, runs_on), matmul_tflops(args.repeats, runs_on, dtype)
    machine = table.meta["environment"]["device_name"]
    print(f"{machine}: copy bandwidth {bandwidth['median']:.1f} GB/s (best {bandwidth['best']:.1f}); "
          f"{dtype} GEMM {gemm['median']:.3f} TFLOP/s (best {gemm['best']:.3f}); {args.threads} threads")
    loaded = load_model("default")
    dims, vocab = ModelDims.from_config(loaded.model.config), loaded.model.config.vocab_size
    pure = DeviceSpec(args.device, bandwidth["best"], {dtype: gemm["best"]}, {"bandwidth": 1.0, "compute": 1.0},
                      {"per_call": 0.0, "per_block": 0.0},
                      machine if runs_on == "cuda" else f"{machine}, {args.threads} threads",
                      {"memory_bandwidth_gbs": f"measured by `{command}` (best of {args.repeats} "
                                               f"{bandwidth['copy_mib']} MiB copies)",
                       f"peak_tflops.{dtype}": f"measured by `{command}` (best of {args.repeats} {gemm['n']}^3 "
                                               f"{dtype} GEMMs)"})
    all_widths = table.widths
    pure_rows = entry_errors(pure, table, dims, vocab, all_widths)
    # 2-fold cross-validation over widths: calibrate on every other width, score the rest.
    calibrated_rows = []
    for fold in (0, 1):
        def fit_on(s, fold=fold):
            return all_widths(s)[fold::2]

        def score_on(s, fold=fold):
            return all_widths(s)[1 - fold::2]

        fitted = calibrate(pure, table, dims, vocab, table.settings(), fit_on(table.settings()[0]))
        calibrated_rows += [r for r in entry_errors(fitted, table, dims, vocab, score_on) if r["entry"] != "base"]
    final = calibrate(pure, table, dims, vocab, table.settings())
    spec_payload = replace(final, sources={**pure.sources,
                                           "efficiency": f"calibrated to device_profiles/{args.device}/{args.flow}",
                                           "overhead_ms": f"calibrated to device_profiles/{args.device}/{args.flow}"})
    write_json_atomic(store.root / "specs" / f"{args.device}.json", spec_payload.to_dict())

    predictor = read_json(RESULTS / f"{args.predictor_results}.json", "predictor results",
                          "run benchmarks/predictor_accuracy.py")
    full = []
    setting_of = {s.phase: s for s in table.settings()}
    for shape in predictor.get("shapes", []):
        # weights, KV cache and activations all counted at the flow's dtype: for llama.cpp's q4_1 an approximation
        # (its KV cache is f16 and its token embedding / tied LM head q8_0), so its bounds are slightly low
        s = replace(setting_of[shape["phase"]], dtype=shape["dtype"])
        works = [block_work(dims, dims.num_heads, dims.intermediate_size, s)] * dims.num_layers + [
            base_work(dims, vocab, s)]
        flops, moved = sum(w.flops for w in works), sum(w.bytes for w in works)
        compute_ms, memory_ms = 1e3 * flops / (gemm["best"] * 1e12), 1e3 * moved / (bandwidth["best"] * 1e9)
        full.append({"flow": shape["flow"], "phase": shape["phase"], "dtype": s.dtype, "measured_ms": shape["full_ms"],
                     "gflops": flops / 1e9, "mbytes": moved / 1e6, "compute_bound_ms": compute_ms,
                     "bandwidth_bound_ms": memory_ms,
                     "compute_roofline_pct_of_measured": 100 * compute_ms / shape["full_ms"],
                     "bandwidth_roofline_pct_of_measured": 100 * memory_ms / shape["full_ms"]})
    published = published_check(Path(args.data_dir))
    payload = {"machine": {"name": machine, "copy_bandwidth_gbs": bandwidth, "gemm_tflops": gemm,
                           "threads": args.threads, "flow": args.flow},
               "full_model": full,
               "estimator_vs_measured": {"pure_roofline": summarize_errors(pure_rows),
                                         "calibrated_cv": summarize_errors(calibrated_rows),
                                         "calibrated_spec": spec_payload.to_dict()},
               "published_gpu_check": published,
               "command": command, "environment": environment()}
    write_json_atomic(RESULTS / f"{args.results}.json", payload)
    print(write_markdown(payload, RESULTS / f"{args.results}.md"))


def write_markdown(payload: dict, path: Path) -> str:
    m, env = payload["machine"], payload["environment"]
    gemm = m["gemm_tflops"]
    est = payload["estimator_vs_measured"]
    lines = ["# Distance to the physical limit, and the roofline estimator's error", "",
             f"{m['name']}, {m['threads']} threads, torch {env['torch']}, {env['date']}. Command: "
             f"`{payload['command']}`.", "",
             # results written before the size was recorded: the size the measured flow's device used
             f"- Copy bandwidth ({m['copy_bandwidth_gbs'].get('copy_mib') or copy_mib(FLOWS.get(m['flow']).device)} "
             "MiB, read + write): "
             f"{m['copy_bandwidth_gbs']['median']:.1f} GB/s median, "
             f"{m['copy_bandwidth_gbs']['best']:.1f} best.",
             f"- {gemm['dtype']} GEMM {gemm['n']}^3: {gemm['median']:.3f} TFLOP/s median, "
             f"{gemm['best']:.3f} best.", "",
             "## Full SmolLM2-135M (30 layers), batch 1", "",
             "Roofline times use the best bandwidth and GEMM figures; a percentage is roofline time / measured "
             "time (100% = at the limit).", "",
             "| flow | dtype | phase | measured ms | GFLOP | MB moved | compute bound ms | bandwidth bound ms | "
             "compute % | bandwidth % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["full_model"]:
        lines.append(f"| {r['flow']} | {r['dtype']} | {r['phase']} | {r['measured_ms']:.1f} | "
                     f"{r['gflops']:.2f} | {r['mbytes']:.0f} "
                     f"| {r['compute_bound_ms']:.2f} | {r['bandwidth_bound_ms']:.2f} | "
                     f"{r['compute_roofline_pct_of_measured']:.0f}% | {r['bandwidth_roofline_pct_of_measured']:.0f}% |")
    lines += ["", f"## Estimator vs the measured {m['flow']} table", "",
              "| estimator | phase | entries | MAPE % | max err % |", "|---|---|---|---|---|"]
    for name, key in (("pure roofline (eff 1, no overhead)", "pure_roofline"),
                      ("calibrated, 2-fold CV over widths", "calibrated_cv")):
        for phase, e in est[key].items():
            lines.append(f"| {name} | {phase} | {e['n']} | {e['mape_pct']:.1f} | {e['max_err_pct']:.1f} |")
    spec = est["calibrated_spec"]
    lines += ["", f"Calibrated on all entries: compute efficiency {spec['efficiency']['compute']:.3f}, bandwidth "
                  f"efficiency {spec['efficiency']['bandwidth']:.3f}, per-call overhead "
                  f"{spec['overhead_ms']['per_call']:.2f} ms, per-block overhead {spec['overhead_ms']['per_block']:.2f} "
                  "ms (written to the device's spec file)."]
    if payload["published_gpu_check"]:
        lines += ["", "## GPU specs vs published llama-bench figures", "",
                  "Paired llama-bench rows from ../shared/data/devices (published, not ours). Efficiencies were taken "
                  "from the dense 12B rows, so those agree by construction; Gemma E2B/E4B look up much of their "
                  "parameters as per-layer embeddings, so streaming the whole file per token over-predicts their time.",
                  "", "| device | model | phase | published tok/s | estimate tok/s | error % |", "|---|---|---|---|---|---|"]
        for r in payload["published_gpu_check"]:
            lines.append(f"| {r['device']} | {r['model']} | {r['phase']} | {r['published_tok_s']:.1f} | "
                         f"{r['estimate_tok_s']:.1f} | {r['err_pct']:+.0f} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


if __name__ == "__main__":
    main()
