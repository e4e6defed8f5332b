"""`amoeba plot lut`, `amoeba plot pareto`: figures from a profile and from Pareto CSVs (PNG + SVG)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import ProfilesOption, check_output, console, example, new_app, parse_list, store
from ..errors import UserError

app = new_app("Draw figures from device profiles and from searches' Pareto CSVs (PNG + SVG).", no_args_is_help=True,
              epilog=example("amoeba plot lut --device amd-epyc --flow torch-eager",
                             "amoeba plot pareto search/pareto-amd-epyc-torch-eager-decode.csv --targets 0.6"))


@app.command("lut", epilog=example("amoeba plot lut --device amd-epyc --flow torch-eager",
                                   "amoeba plot lut --device box --flow torch-eager --update-profile"))
def plot_lut(
    device: str = typer.Option(..., "--device", "-d", help="Profile name."),
    flow: str = typer.Option(..., "--flow", "-f", help="Flow of the profile."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output stem (default: plots/DEVICE-FLOW-lut)."),
    update_profile: bool = typer.Option(False, "--update-profile", help="Write the profile's own lut.png/.svg "
                                                                        "(committed beside lut.csv) instead."),
    profiles_dir: Optional[Path] = ProfilesOption,
) -> None:
    """Block latency over widths per phase, and predicted-vs-measured when the profile was validated."""
    from ..plot import lut_figure, render

    if out is not None and update_profile:
        raise UserError("give --out or --update-profile, not both")
    lut = store(profiles_dir).load(device, flow)
    stem = lut.directory / "lut" if update_profile else out or Path("plots") / f"{device}-{flow}-lut"
    check_output(stem)
    paths = render(lut_figure(lut), stem)
    console.print("wrote " + ", ".join(map(str, paths)))


@app.command("pareto", epilog=example("amoeba plot pareto search/pareto-amd-epyc-torch-eager-decode.csv "
                                      "--targets 0.5,0.65,0.8 --out search/pareto --html"))
def plot_pareto(
    files: list[Path] = typer.Argument(..., help="Pareto CSVs from `amoeba pareto` (one panel each)."),
    out: Path = typer.Option(Path("search/pareto"), "--out", "-o", help="Output stem (.png and .svg)."),
    targets: Optional[str] = typer.Option(None, help="Latency targets to mark, as ratios of the full model, e.g. "
                                                     "0.5,0.65,0.8."),
    html: bool = typer.Option(False, "--html", help="Also OUT.html: interactive (zoom, subnet names on hover), "
                                                    "self-contained; needs plotly (the [html] extra)."),
) -> None:
    """Pareto fronts (accuracy proxy vs latency) with baselines, one panel per device/flow."""
    from ..plot import pareto_figure, plotly_modules, render, render_html

    ratios = parse_list(targets, float, "--targets") if targets else []
    if any(not 0 < r < float("inf") for r in ratios):
        raise UserError(f"--targets: ratios of the full model's latency must be > 0, got {targets}")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"Pareto CSV not found: {', '.join(missing)}; make one with `amoeba pareto`")
    check_output(out)
    if html:
        plotly_modules()
    figure = pareto_figure(files, ratios)
    paths = render(figure, out) + ([render_html(figure, out.with_suffix(".html"))] if html else [])
    console.print("wrote " + ", ".join(map(str, paths)))
