"""`amoeba flows`, `amoeba profile [import]`, `amoeba predict`: the profiling half of the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .errors import UserError

PROFILES_ENV = "AMOEBA_PROFILES_DIR"
ProfilesOption = typer.Option(None, "--profiles-dir", help="Root of device profiles (default: $AMOEBA_PROFILES_DIR "
                                                           "or ./device_profiles).")
profile_app = typer.Typer(help="Measure a device under a deployment flow into a latency lookup table "
                               "(or import one measured elsewhere).", no_args_is_help=False)


def profiles_root(path: Path | None) -> Path:
    return Path(path or os.environ.get(PROFILES_ENV, "device_profiles"))


def parse_list(text: str, kind: type, what: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a comma-separated list of {kind.__name__}s") from None


def flows_table() -> Table:
    from .profiling.flows import FLOWS
    from .profiling.roofline import spec_names

    table = Table(title="deployment flows")
    for column in ("flow", "kind", "runs on", "status", "what it is"):
        table.add_column(column)
    for name in FLOWS.names():
        flow = FLOWS.get(name)
        reason = flow.unavailable()
        table.add_row(name, flow.kind, flow.device, "[green]available[/]" if reason is None else f"missing: {reason}",
                      flow.description)
    table.add_row("roofline", "estimate", "any spec", f"specs: {', '.join(spec_names()) or 'none'}",
                  "roofline estimate from a device spec file (device_profiles/specs/NAME.json)")
    return table


@profile_app.callback(invoke_without_command=True)
def profile(
    ctx: typer.Context,
    flow: str = typer.Option("torch-eager", "--flow", "-f", help="Deployment flow (`amoeba flows`), or 'roofline' "
                                                                "to estimate from device_profiles/specs/DEVICE.json."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Profile name (default: this machine's CPU/GPU "
                                                                      "model); with --flow roofline, the spec name."),
    model: str = typer.Option("default", "--model", "-m", help="'default' (embedded SmolLM2-135M) or a HF dir."),
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
    layers_per_row: int = typer.Option(8, "--layers-per-row", help="Blocks in each timed model; block latency is "
                                                                   "(T_k - T_0) / k."),
    passes: int = typer.Option(3, help="Times over the whole grid; each model's passes are combined by their median, "
                                       "so slow drifts of a shared machine do not bias one width."),
    quick: bool = typer.Option(False, help="4 MLP widths, one pass and a looser stop rule (±5%, ≤40 repeats): "
                                           "minutes, not tens of minutes."),
    overwrite: bool = typer.Option(False, help="Discard this profile's rows and start again."),
    profiles_dir: Optional[Path] = ProfilesOption,
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads, pinned and recorded."),
) -> None:
    """Profile a device: time a 0-layer and a k-layer model at every width, per phase; resumable; -> lut.csv."""
    if ctx.invoked_subcommand:
        return
    from .cli import _load, _setup, console

    _setup(threads)
    from .profiling.harness import StopRule
    from .profiling.lut import Setting
    from .profiling.profile import DEFAULT_MLP_RATIOS, QUICK_MLP_RATIOS, WidthGrid, build_profile
    from .subnet import ModelDims

    phase_list = parse_list(phases, str, "--phases")
    bad = [p for p in phase_list if p not in ("prefill", "decode")]
    if bad or not phase_list:
        raise UserError(f"--phases: {bad or phases!r} unknown; use prefill, decode or both")
    if min(prefill_tokens, context, batch) < 1:
        raise UserError("--prefill-tokens, --context and --batch must be >= 1")
    settings = [Setting(p, prefill_tokens if p == "prefill" else context, batch, dtype) for p in phase_list]
    ratios = parse_list(mlp_widths, float, "--mlp-widths") if mlp_widths else (
        QUICK_MLP_RATIOS if quick else DEFAULT_MLP_RATIOS)
    if any(not 0 < r <= 1 for r in ratios):
        raise UserError(f"--mlp-widths: ratios must be in (0, 1], got {ratios}")
    loaded = _load(model)
    dims = ModelDims.from_config(loaded.model.config)
    grid = WidthGrid.for_model(dims, ratios, tuple(parse_list(heads, int, "--heads")) if heads else None)
    root = profiles_root(profiles_dir)
    if flow == "roofline":
        from .profiling.roofline import estimate_profile, load_spec

        if device is None:
            raise UserError("--flow roofline needs --device NAME with a spec file (`amoeba flows` lists them)")
        spec = load_spec(device, root)
        lut = estimate_profile(loaded, spec, root / device / "roofline", settings, grid)
    else:
        from .profiling.environment import default_device_slug
        from .profiling.flows import FLOWS

        device = device or default_device_slug(FLOWS.get(flow).device)
        rule = StopRule.quick() if quick else StopRule()
        lut = build_profile(loaded, root / device / flow, device, flow, settings, grid, layers_per_row, rule,
                            passes=1 if quick else passes, overwrite=overwrite)
    console.print(lut_summary(lut))
    console.print(f"wrote {lut.directory}/lut.csv (+ meta.json); predict with `amoeba predict --device {device} "
                  f"--flow {flow} --subnet s.json`, draw with `amoeba plot lut --device {device} --flow {flow}`")


@profile_app.command("import")
def import_(
    results: Path = typer.Argument(..., help="CSV: phase,tokens,batch,dtype,layers,heads,mlp,median_ms[,p10_ms,"
                                             "p90_ms]; one row per timed model (see README)."),
    flow: str = typer.Option(..., "--flow", "-f", help="Flow the results were measured with, e.g. tensorrt-llm."),
    device: str = typer.Option(..., "--device", "-d", help="Name of the device they were measured on."),
    model: str = typer.Option("default", "--model", "-m", help="The model the results are for."),
    overwrite: bool = typer.Option(False, help="Replace an existing profile."),
    profiles_dir: Optional[Path] = ProfilesOption,
) -> None:
    """Import latencies measured on another device (trtllm-bench, mlc_llm bench, ...) as a profile."""
    from .cli import _load, _setup, console
    from .profiling.profile import import_profile

    _setup(None)
    lut = import_profile(_load(model), results, profiles_root(profiles_dir) / device / flow, device, flow, overwrite)
    console.print(lut_summary(lut))
    console.print(f"wrote {lut.directory}")


def lut_summary(lut) -> Table:
    """One row per width, one column per setting: the table a user checks after profiling."""
    settings = lut.settings()
    table = Table(title=f"{lut.name} ({lut.meta['source']}): latency in ms")
    table.add_column("component")
    for s in settings:
        table.add_column(s.label(), justify="right")
    table.add_row("base (embed + norm + head + call)", *[f"{lut.base_ms(s):.3f}" for s in settings])
    for h, m in sorted({w for s in settings for w in lut.widths(s)}):
        table.add_row(f"block {h} heads, {m} MLP",
                      *[f"{lut.block_ms(s, h, m):.3f}" if (h, m) in lut.widths(s) else "-" for s in settings])
    return table


def predict(
    subnet_file: Path = typer.Option(..., "--subnet", "-s", help="Subnet JSON (from `amoeba subnet`)."),
    device: str = typer.Option(..., "--device", "-d", help="Profile name under the profiles dir."),
    flow: str = typer.Option(..., "--flow", "-f", help="Flow of the profile."),
    model: str = typer.Option("default", "--model", "-m", help="The model the subnet belongs to."),
    correction: bool = typer.Option(True, help="Apply the profile's fitted correction when it has one."),
    profiles_dir: Optional[Path] = ProfilesOption,
) -> None:
    """Predict a subnet's latency on a profiled device/flow for every phase in the profile (microseconds each)."""
    from .artifacts import read_json
    from .cli import console
    from .profiling.lut import LookupTable
    from .profiling.predictor import Predictor
    from .subnet import ModelDims, Subnet

    lut = LookupTable.load(profiles_root(profiles_dir) / device / flow)
    payload = read_json(subnet_file, "subnet", "make one with `amoeba subnet`")
    if payload.get("model") and payload["model"] != lut.meta["model"]:
        raise UserError(f"subnet is for model {payload['model']} but profile {lut.name} is for {lut.meta['model']}")
    dims = ModelDims(**lut.meta["model_dims"]) if "model_dims" in lut.meta else None
    if dims is None:
        raise UserError(f"profile {lut.name} records no model dims: re-profile")
    spec = Subnet.from_dict(payload, dims)
    predictor = Predictor(lut, use_correction=correction)
    table = Table(title=f"{spec.summary(dims)} on {lut.name} ({lut.meta['source']})")
    for column in ("setting", "predicted ms", "corrected"):
        table.add_column(column)
    for setting in lut.settings():
        table.add_row(setting.label(), f"{predictor.predict_subnet_ms(setting, spec, dims):.2f}",
                      str(predictor.is_corrected(setting)))
    console.print(table)


plot_app = typer.Typer(help="Draw figures from profiles (and, later, searches).", no_args_is_help=True)


@plot_app.command("lut")
def plot_lut(
    device: str = typer.Option(..., "--device", "-d", help="Profile name."),
    flow: str = typer.Option(..., "--flow", "-f", help="Flow of the profile."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output stem (default: the profile dir / lut)."),
    profiles_dir: Optional[Path] = ProfilesOption,
) -> None:
    """Block latency over widths per phase, and predicted-vs-measured when the profile was validated."""
    from .cli import console
    from .plot import lut_figure, render
    from .profiling.lut import LookupTable

    lut = LookupTable.load(profiles_root(profiles_dir) / device / flow)
    paths = render(lut_figure(lut), out or lut.directory / "lut")
    console.print("wrote " + ", ".join(map(str, paths)))
