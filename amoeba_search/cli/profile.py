"""`amoeba flows`, `amoeba profile [import]`, `amoeba predict`: the profiling half of the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import (ModelOption, ProfilesOption, ThreadsOption, check_output, check_range, console, example, load,
                     new_app, parse_list, setup, store)
from ..errors import UserError
from ..profiling.flows import FLOWS

app = new_app("")
profile_app = new_app("Measure a device under a deployment flow into a latency lookup table (or estimate one from "
                      "a device spec, or import one measured elsewhere).", no_args_is_help=False,
                      epilog=example("amoeba profile --flow torch-eager --threads 2",
                                     "amoeba profile import --flow tensorrt-llm --device orin results.csv"))
DeviceOption = typer.Option(..., "--device", "-d", help="Profile name (a device dir under the profile root; "
                                                        "`amoeba flows` lists the profiles found).")
FlowOption = typer.Option(..., "--flow", "-f", help=f"Flow of the profile: {FLOWS.choices()}.")


@app.command(epilog=example("amoeba flows"))
def flows(profiles_dir: Optional[Path] = ProfilesOption) -> None:
    """List deployment flows, whether each is available here (and if not, why and how to get it), and the
    profiles found."""
    profiles = store(profiles_dir)
    table = Table(title="deployment flows")
    for column in ("flow", "kind", "runs on", "status", "what it is"):
        table.add_column(column)
    for name, flow in FLOWS.items().items():
        reason = flow.unavailable()
        status = "[green]available[/]" if reason is None else f"missing: {escape(reason)}"
        note = flow.note(profiles)
        table.add_row(name, flow.kind, flow.device, status + (f"; {escape(note)}" if note else ""),
                      escape(flow.description))
    console.print(table)
    console.print(f"profiles ({', '.join(map(str, profiles.roots))}): {', '.join(profiles.devices()) or 'none'}")


@profile_app.callback(invoke_without_command=True, epilog=example(
    "amoeba profile --flow torch-eager --threads 2",
    "amoeba profile --flow onnxruntime --quick",
    "amoeba profile --flow llama.cpp --dtype q4_1 --phases decode --passes 5 --estimator quiet",
    "amoeba profile --flow roofline --device a5000 --dtype float16",
    "amoeba profile import --flow tensorrt-llm --device orin results.csv"))
def profile(
    ctx: typer.Context,
    flow: str = typer.Option("torch-eager", "--flow", "-f", help=f"Deployment flow: {FLOWS.choices()} "
                                                                "(`amoeba flows` says which run here)."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Profile name (default: this machine's CPU/GPU "
                                                                      "model); for an estimate flow, the spec name."),
    model: str = ModelOption,
    phases: str = typer.Option("prefill,decode", help="Comma list of phases: prefill (P prompt tokens), decode "
                                                      "(one token after C cached tokens)."),
    prefill_tokens: int = typer.Option(128, "--prefill-tokens", "-P", help="Prompt length P for prefill."),
    context: int = typer.Option(128, "--context", "-C", help="Cached tokens C before the decoded token."),
    batch: int = typer.Option(1, help="Batch size."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 (torch-eager, CUDA), float16 (CUDA, llama.cpp), "
                                                 "q8_0 or q4_1 (llama.cpp GGUF weights)."),
    heads: Optional[str] = typer.Option(None, help="Head counts to profile, e.g. 3,6,9 (default: every GQA-valid one)."),
    mlp_widths: Optional[str] = typer.Option(None, "--mlp-widths", help="MLP width ratios, e.g. 0.25,0.5,0.75,1 "
                                                                        "(default: 0.25..1 in eighths)."),
    layers_per_row: Optional[int] = typer.Option(None, "--layers-per-row", help="Blocks in each timed model; "
                                                 "block latency is (T_k - T_0) / k (default: two thirds of the "
                                                 "model's depth, at most 20: deep rows time blocks as deep subnets "
                                                 "run them)."),
    passes: int = typer.Option(3, help="Times over the whole grid; each model's passes are combined by --estimator, "
                                       "so slow drifts of a shared machine do not bias one width."),
    estimator: str = typer.Option("median", help="How a model's passes become one latency: median (of the passes' "
                                                 "medians), quiet (lowest p10 over the passes: for a shared VM "
                                                 "whose neighbours slow it down in bursts; more passes help) or "
                                                 "paired (every model timed in turns with one reference model and "
                                                 "stated as a ratio to it: for a VM whose speed swings within "
                                                 "minutes; twice the timing)."),
    block_fit: str = typer.Option("linear", "--block-fit", help="linear: every width's block on one least-squares "
                                                                "plane in (attention, heads, MLP channels), pooling "
                                                                "all rows' noise; per-width: one free value each."),
    quick: bool = typer.Option(False, help="4 MLP widths, one pass and a looser stop rule (±5%, ≤40 repeats): "
                                           "minutes, not tens of minutes."),
    mlp_only_layers: bool = typer.Option(True, "--mlp-only-layers/--no-mlp-only-layers",
                                         help="Also time attention-free (MLP-only) blocks at every MLP width, the "
                                              "variants `search --space heterogeneous` offers."),
    overwrite: bool = typer.Option(False, help="Discard this profile's rows and start again."),
    profiles_dir: Optional[Path] = ProfilesOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Profile a device: time a 0-layer and a k-layer model at every width, per phase; resumable; -> lut.csv."""
    if ctx.invoked_subcommand:
        return
    setup(threads)
    from ..profiling.harness import StopRule
    from ..profiling.lut import Setting, check_block_fit, check_estimator
    from ..profiling.profile import DEFAULT_MLP_RATIOS, QUICK_MLP_RATIOS, WidthGrid, make_profile
    from ..families.base import model_dims

    FLOWS.get(flow)
    phase_list = parse_list(phases, str, "--phases")
    bad = [p for p in phase_list if p not in ("prefill", "decode")]
    if bad or not phase_list:
        raise UserError(f"--phases: {bad or phases!r} unknown; use prefill, decode or both")
    if min(prefill_tokens, context, batch) < 1:
        raise UserError("--prefill-tokens, --context and --batch must be >= 1")
    settings = [Setting(p, prefill_tokens if p == "prefill" else context, batch, dtype) for p in phase_list]
    ratios = parse_list(mlp_widths, float, "--mlp-widths") if mlp_widths else (
        QUICK_MLP_RATIOS if quick else DEFAULT_MLP_RATIOS)
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise UserError(f"--mlp-widths: ratios must be in (0, 1], got {ratios}")
    if layers_per_row is not None:
        check_range("--layers-per-row", layers_per_row, 1)
    check_range("--passes", passes, 1)
    check_estimator(estimator, "--estimator")
    check_block_fit(block_fit, "--block-fit")
    profiles = store(profiles_dir)
    check_output(profiles.root, directory=True)
    loaded = load(model)
    dims = model_dims(loaded.model.config)
    grid = WidthGrid.for_model(dims, ratios, tuple(parse_list(heads, int, "--heads")) if heads else None,
                               mlp_only_layers)
    lut = make_profile(loaded, profiles, flow, device, settings, grid, layers_per_row,
                       StopRule.quick() if quick else StopRule(), passes=1 if quick else passes, overwrite=overwrite,
                       estimator=estimator, block_fit=block_fit)
    console.print(lut_summary(lut))
    name = lut.meta["device"]
    console.print(f"wrote {lut.directory}/lut.csv (+ meta.json); predict with `amoeba predict --device {name} "
                  f"--flow {flow} --subnet s.json`, draw with `amoeba plot lut --device {name} --flow {flow}`")


@profile_app.command("import", epilog=example("amoeba profile import --flow tensorrt-llm --device orin results.csv",
                                              "amoeba profile import --flow llama.cpp --device orin kit/results.jsonl",
                                              "amoeba profile import --flow torch-eager --device a5000 kit/results"))
def import_(
    results: Path = typer.Argument(..., help="CSV: phase,tokens,batch,dtype,layers,heads,mlp,median_ms[,p10_ms,"
                                             "p90_ms]; one row per timed model (see README). Or llama-bench "
                                             "JSONL/JSON written by a kit's run.sh (`amoeba profile kit`), with "
                                             "its kit.json beside it. Or an optimum-benchmark kit's results/ "
                                             "directory (benchmark.json files; kit.json above it)."),
    flow: str = typer.Option(..., "--flow", "-f", help=f"Flow the results were measured with: {FLOWS.choices()}."),
    device: str = typer.Option(..., "--device", "-d", help="Name of the device they were measured on."),
    model: str = ModelOption,
    overwrite: bool = typer.Option(False, help="Replace an existing profile instead of extending it."),
    estimator: str = typer.Option("median", help="A row's latency: median, or quiet (its p10: the fast tail, "
                                                 "where other tenants of a shared machine only add time)."),
    block_fit: str = typer.Option("linear", "--block-fit", help="linear: every width's block on one least-squares "
                                                                "plane in (attention, heads, MLP channels), pooling "
                                                                "all rows' noise; per-width: one free value each."),
    profiles_dir: Optional[Path] = ProfilesOption,
) -> None:
    """Import latencies measured on another device (trtllm-bench, mlc_llm bench, ...) as a profile: every row is
    checked first, then the whole profile is written at once."""
    from ..profiling.profile import import_profile

    setup(None)
    from ..profiling.lut import check_block_fit, check_estimator

    FLOWS.get(flow)
    check_estimator(estimator, "--estimator")
    check_block_fit(block_fit, "--block-fit")
    if not results.exists():
        raise UserError(f"results {results} not found")
    if not device.strip() or "/" in device or device in (".", ".."):
        raise UserError(f"--device {device!r}: give a plain name (it becomes a directory under the profile root)")
    profiles = store(profiles_dir)
    check_output(profiles.directory(device, flow), directory=True)
    lut = import_profile(load(model), results, profiles, device, flow, overwrite, estimator, block_fit)
    console.print(lut_summary(lut))
    console.print(f"wrote {lut.directory}; predict with `amoeba predict --device {device} --flow {flow} "
                  "--subnet s.json`")


@profile_app.command("refit", epilog=example("amoeba profile refit --device intel-xeon --flow torch-eager "
                                             "--block-fit linear",
                                             "amoeba profile refit --device intel-xeon --flow llama.cpp "
                                             "--estimator quiet"))
def refit(
    device: str = typer.Option(..., "--device", "-d", help="Profile name."),
    flow: str = typer.Option(..., "--flow", "-f", help="Its flow."),
    estimator: Optional[str] = typer.Option(None, help="median or quiet (default: the profile's)."),
    block_fit: Optional[str] = typer.Option(None, "--block-fit", help="linear or per-width (default: the "
                                                                      "profile's)."),
    profiles_dir: Optional[Path] = ProfilesOption,
) -> None:
    """Fit a profile's table again from its measurements.csv (another estimator or block fit) without timing
    anything; its correction, validation and figures, derived from the old table, are removed."""
    setup(None)
    from ..profiling.lut import check_block_fit, check_estimator
    from ..profiling.profile import refit_profile

    if estimator is not None:
        check_estimator(estimator, "--estimator")
    if block_fit is not None:
        check_block_fit(block_fit, "--block-fit")
    lut = refit_profile(store(profiles_dir), device, flow, estimator, block_fit)
    console.print(lut_summary(lut))
    console.print(f"refitted {lut.directory}/lut.csv (estimator {lut.estimator}, block fit {lut.block_fit}); "
                  "re-validate with benchmarks/predictor_accuracy.py")


def lut_summary(lut) -> Table:
    """One row per width, one column per setting: the table a user checks after profiling."""
    settings = lut.settings()
    table = Table(title=escape(f"{lut.name} ({lut.meta['source']}): latency in ms"))
    table.add_column("component")
    for s in settings:
        table.add_column(s.label(), justify="right")
    table.add_row("base (embed + norm + head + call)", *[f"{lut.base_ms(s):.3f}" for s in settings])
    for h, m in sorted({w for s in settings for w in lut.widths(s)}):
        table.add_row(f"block {h} heads, {m} MLP",
                      *[f"{lut.block_ms(s, h, m):.3f}" if (h, m) in lut.widths(s) else "-" for s in settings])
    return table


@app.command(epilog=example("amoeba predict --device amd-epyc --flow torch-eager --subnet s.json"))
def predict(
    subnet_file: Path = typer.Option(..., "--subnet", "-s", help="Subnet JSON (from `amoeba subnet`)."),
    device: str = DeviceOption,
    flow: str = FlowOption,
    correction: bool = typer.Option(True, help="Apply the profile's fitted correction when it has one."),
    profiles_dir: Optional[Path] = ProfilesOption,
) -> None:
    """Predict a subnet's latency (ms) on a profiled device/flow for every setting in the profile."""
    from ..artifacts import read_json
    from ..profiling.predictor import Predictor
    from ..subnet import ModelDims, Subnet

    FLOWS.get(flow)
    lut = store(profiles_dir).load(device, flow)
    payload = read_json(subnet_file, "subnet", "make one with `amoeba subnet`")
    if not isinstance(payload, dict):
        raise UserError(f"{subnet_file} is not a subnet file (a JSON object): make one with `amoeba subnet`")
    if payload.get("model") and payload["model"] != lut.meta["model"]:
        raise UserError(f"subnet is for model {payload['model']} but profile {lut.name} is for {lut.meta['model']}")
    if not isinstance(lut.meta.get("model_dims"), dict):
        raise UserError(f"profile {lut.name} records no model dims: re-profile (or re-import) it")
    try:
        dims = ModelDims(**lut.meta["model_dims"])
    except TypeError:
        raise UserError(f"profile {lut.name} has malformed model dims: re-profile (or re-import) it") from None
    spec = Subnet.from_dict(payload, dims)
    predictor = Predictor(lut, use_correction=correction)
    table = Table(title=escape(f"{spec.summary(dims)} on {lut.name} ({lut.meta['source']})"))
    for column in ("setting", "metric", "predicted ms", "tokens/s", "corrected"):
        table.add_column(column)
    for setting in lut.settings():
        latency_ms = predictor.predict_subnet_ms(setting, spec, dims)
        table.add_row(setting.label(), setting.metric, f"{latency_ms:.2f}",
                      f"{setting.tokens_per_s(latency_ms):.1f} {setting.rate_name.split()[0]}",
                      str(predictor.is_corrected(setting)))
    console.print(table)


@profile_app.command("kit", epilog=example(
    "amoeba profile kit --flow llama.cpp --device orin --out orin-kit --threads 6",
    "scp -r orin-kit orin: && ssh orin 'LLAMA_BENCH=~/llama.cpp/build/bin/llama-bench orin-kit/run.sh'",
    "scp orin:orin-kit/results.jsonl orin-kit/ && amoeba profile import --flow llama.cpp --device orin "
    "orin-kit/results.jsonl",
    "amoeba profile kit --flow torch-eager --device a5000 --backend-device cuda --dtype bfloat16 --out a5000-kit",
    "ssh a5000 'pip install optimum-benchmark && a5000-kit/run.sh'  # then copy a5000-kit/results back and:",
    "amoeba profile import --flow torch-eager --device a5000 a5000-kit/results"))
def kit(
    out: Path = typer.Option(..., "--out", "-o", help="Kit directory to write (models, kit.json, run.sh)."),
    device: str = typer.Option(..., "--device", "-d", help="Name of the device the kit is for (the profile name)."),
    flow: str = typer.Option("llama.cpp", "--flow", "-f", help="llama.cpp (a llama-bench kit of GGUF models), "
                                                                "torch-eager or torch-compile (an optimum-benchmark "
                                                                "kit of model configs)."),
    model: str = ModelOption,
    phases: str = typer.Option("prefill,decode", help="Comma list: prefill (TTFT of P tokens), decode (TPOT after "
                                                      "C cached tokens)."),
    prefill_tokens: int = typer.Option(128, "--prefill-tokens", "-P", help="Prompt length P for prefill."),
    context: int = typer.Option(128, "--context", "-C", help="Cached tokens C before the decoded token."),
    dtype: Optional[str] = typer.Option(None, help="llama.cpp GGUF weights: float32, float16, q8_0 or q4_1 "
                                                   "(default); optimum-benchmark: float32 (default), bfloat16 or "
                                                   "float16."),
    heads: Optional[str] = typer.Option(None, help="Head counts, e.g. 3,6,9 (default: every GQA-valid one)."),
    mlp_widths: Optional[str] = typer.Option(None, "--mlp-widths", help="MLP width ratios (default: 0.25..1 in "
                                                                        "eighths)."),
    mlp_only_layers: bool = typer.Option(True, "--mlp-only-layers/--no-mlp-only-layers",
                                         help="Also time attention-free (MLP-only) blocks (llama.cpp only)."),
    layers_per_row: Optional[int] = typer.Option(None, "--layers-per-row", help="Blocks in each timed model "
                                                 "(default: two thirds of the model's depth, at most 20)."),
    passes: int = typer.Option(2, help="Times run.sh goes over all models (their median is imported)."),
    repetitions: int = typer.Option(10, help="llama-bench -r / optimum-benchmark iterations per test."),
    threads: int = typer.Option(4, help="Threads written into run.sh (THREADS=... overrides)."),
    backend_device: str = typer.Option("cpu", "--backend-device", help="optimum-benchmark: cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Write what profiling a device without amoeba_search needs: the models, a manifest and a script for the
    field's own tool (llama-bench, optimum-benchmark); its results import with `amoeba profile import`."""
    setup(None)
    from ..artifacts import atomic_directory
    from ..profiling import llama_bench, optimum_benchmark
    from ..profiling.lut import Setting
    from ..profiling.profile import DEFAULT_MLP_RATIOS, WidthGrid
    from ..profiling.timed_models import default_layers_per_row
    from ..families.base import model_dims

    tools = {"llama.cpp": llama_bench, "torch-eager": optimum_benchmark, "torch-compile": optimum_benchmark}
    if flow not in tools:
        raise UserError(f"--flow {flow!r}: kits exist for {', '.join(tools)}; import other tools' results with "
                        "`amoeba profile import`")
    if backend_device not in ("cpu", "cuda"):
        raise UserError(f"--backend-device {backend_device!r}: choose cpu or cuda")
    dtype = dtype or ("q4_1" if flow == "llama.cpp" else "float32")
    phase_list = parse_list(phases, str, "--phases")
    if not phase_list or any(p not in ("prefill", "decode") for p in phase_list):
        raise UserError(f"--phases {phases!r}: use prefill, decode or both")
    for name, value in (("--prefill-tokens", prefill_tokens), ("--context", context), ("--passes", passes),
                        ("--repetitions", repetitions), ("--threads", threads)):
        check_range(name, value, 1)
    if layers_per_row is not None:
        check_range("--layers-per-row", layers_per_row, 1)
    if not device.strip() or "/" in device:
        raise UserError(f"--device {device!r}: give a plain name")
    check_output(out, directory=True)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another --out or pass --overwrite")
    ratios = parse_list(mlp_widths, float, "--mlp-widths") if mlp_widths else DEFAULT_MLP_RATIOS
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise UserError(f"--mlp-widths: ratios must be in (0, 1], got {ratios}")
    settings = [Setting(p, prefill_tokens if p == "prefill" else context, 1, dtype) for p in phase_list]
    loaded = load(model)
    dims = model_dims(loaded.model.config)
    grid = WidthGrid.for_model(dims, ratios, tuple(parse_list(heads, int, "--heads")) if heads else None,
                               mlp_only_layers and flow == "llama.cpp")
    most = dims.num_layers - (1 if any(h == 0 for h, _ in grid.widths()) else 0)   # MLP-only rows add a lead block
    if layers_per_row is None:
        layers_per_row = default_layers_per_row(dims.num_layers, most < dims.num_layers)
    if layers_per_row > most:
        raise UserError(f"--layers-per-row {layers_per_row}: the model has {dims.num_layers} layers; give at most "
                        f"{most}")
    if flow != "llama.cpp":
        with atomic_directory(out, overwrite=overwrite) as tmp:
            optimum_benchmark.write_kit(loaded, tmp, device, flow, settings, grid, layers_per_row, passes,
                                        repetitions, threads, backend_device)
        console.print(f"wrote {out} ({len(grid.widths()) + 1} model configs, kit.json, run.sh): copy it to {device}, "
                      f"run `{out}/run.sh` there (optimum-benchmark installed), bring back {out}/results and import "
                      f"it with `amoeba profile import --flow {flow} --device {device} {out}/results`")
        return
    with atomic_directory(out, overwrite=overwrite) as tmp:
        llama_bench.write_kit(loaded, tmp, device, settings, grid, layers_per_row, passes, repetitions, threads)
    console.print(f"wrote {out} ({len(grid.widths()) + 1} GGUF models, kit.json, run.sh): copy it to {device}, run "
                  f"`LLAMA_BENCH=/path/to/llama-bench {out}/run.sh` there, bring back {out}/results.jsonl and import "
                  f"it with `amoeba profile import --flow llama.cpp --device {device} {out}/results.jsonl`")
