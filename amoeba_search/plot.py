"""Figures drawn from computed data only: first a small data object per figure (testable without drawing),
then renderers: matplotlib for PNG and SVG, plotly for an interactive HTML page."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import UserError
from .profiling.lut import LookupTable


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    style: str = "line"                       # line, points, faint (background points) or mark (one highlighted)
    notes: list[str] = field(default_factory=list)    # per-point annotations (e.g. the value of a clipped point)
    labels: list[str] = field(default_factory=list)   # per-point names (subnet keys), shown on hover in HTML


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    diagonal: bool = False                    # draw y = x (predicted vs measured)
    vlines: list[tuple[str, float]] = field(default_factory=list)   # (label, x) markers, e.g. latency targets
    ylog: bool = False
    ylim: tuple[float, float] | None = None   # points beyond it are drawn at the edge with their value noted


@dataclass
class Figure:
    title: str
    panels: list[Panel]


def lut_figure(lut: LookupTable) -> Figure:
    """Block latency over MLP width (one line per head count) per setting, and the predictor check when the
    profile has one (validation.csv): where blocks scale with width the device is compute/bandwidth-bound; a flat
    line means per-block overhead dominates."""
    panels = []
    for setting in lut.settings():
        panel = Panel(f"{setting.label()}  (base {lut.base_ms(setting):.2f} ms)", "MLP channels per block",
                      "block latency (ms)")
        widths = lut.widths(setting)
        for heads in sorted({h for h, _ in widths}):
            channels = sorted(m for h, m in widths if h == heads)
            panel.series.append(Series(f"{heads} heads" if heads else "MLP-only (no attention)", channels,
                                       [lut.block_ms(setting, heads, m) for m in channels]))
        panels.append(panel)
    validation = lut.directory / "validation.csv"
    if validation.is_file():
        frame = pd.read_csv(validation)
        if "space" not in frame:                          # validations from before heterogeneous subnets
            frame["space"] = "uniform"
        for phase, group in frame.groupby("phase"):      # one panel per phase: decode is ~40x shorter than prefill
            panel = Panel(f"{phase}: predicted vs measured (random subnets)", "measured latency (ms)",
                          "predicted latency (ms)", diagonal=True)
            for space, rows in group.groupby("space"):
                panel.series.append(Series(f"{space}: LUT composed", rows["measured_ms"].tolist(),
                                           rows["composed_ms"].tolist(), "points"))
            if group["corrected_cv_ms"].notna().any():
                panel.series.append(Series("corrected (cross-validated)", group["measured_ms"].tolist(),
                                           group["corrected_cv_ms"].tolist(), "points"))
            panels.append(panel)
    kind = lut.meta.get("source", "measured")
    return Figure(f"{lut.name} ({kind})", panels)


HETERO_SERIES = "heterogeneous (exact)"
PARETO_ORDER = ("search trials", "search front", HETERO_SERIES, "depth only (DP)", "width only (FLAP)", "drop-last-k")


PARETO_COLUMNS = ["series", "latency_ms", "value", "device", "flow", "source", "setting", "proxy", "proxy_unit",
                  "direction", "full_model_ms"]


def read_pareto_csv(path: Path) -> pd.DataFrame:
    """A CSV written by `amoeba pareto`, checked: one line for an empty, foreign or hand-broken file."""
    hint = "make one with `amoeba pareto`"
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path} is not a readable Pareto CSV ({str(exc).splitlines()[0]}): {hint}") from None
    missing = [c for c in PARETO_COLUMNS if c not in frame.columns]
    if missing or frame.empty:
        raise UserError(f"{path} {'lacks columns ' + str(missing) if missing else 'has no rows'}: {hint}")
    try:
        for column in ("latency_ms", "value", "full_model_ms"):
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype(float)
    except (ValueError, TypeError):
        raise UserError(f"{path}: latency_ms, value and full_model_ms must be numbers: {hint}") from None
    return frame


def pareto_figure(files: list[Path], target_ratios: list[float] = (),
                  marks: list[tuple[str, float, float]] = ()) -> Figure:
    """One panel per pareto CSV (device/flow/phase): the searched front, all trials, the baselines and the full
    model; vertical lines at the latency targets with their ms; `marks` (label, latency_ms, value) highlight
    chosen subnets. The accuracy axis is clipped to what matters (the front and the marks, with some room):
    baselines far off-scale (drop-last-k reaches ppl 1e10) sit on the edge with their value written."""
    panels = []
    for path in files:
        frame = read_pareto_csv(path)
        first = frame.iloc[0]
        kind = "" if first["source"] == "measured" else f", {first['source']}"
        minimize = first["direction"] == "minimize"
        detail = first.get("proxy_detail", "")
        detail = "" if pd.isna(detail) or not detail else f" on {detail}"
        metric = first.get("metric", "latency")
        metric = "latency" if pd.isna(metric) else metric
        unit = first.get("proxy_unit", first["proxy"])               # older CSVs name no unit
        panel = Panel(f"{first['device']} / {first['flow']}{kind}\n{first['setting']}", f"predicted {metric} (ms)",
                      f"{first['proxy']}{detail}\n({'lower' if minimize else 'higher'} is better)",
                      ylog=unit == "ppl")                            # every perplexity proxy on a log axis
        for name in PARETO_ORDER:
            rows = frame[frame["series"] == name].sort_values("latency_ms")
            if len(rows):
                style = "faint" if name == "search trials" else "line" if name in ("search front", HETERO_SERIES) \
                    else "points"
                panel.series.append(Series(name, rows["latency_ms"].tolist(), rows["value"].tolist(), style,
                                           labels=rows["key"].fillna("").astype(str).tolist()
                                           if "key" in rows else []))
        full = frame[frame["latency_ms"] >= frame["full_model_ms"] - 1e-9]
        if len(full):
            panel.series.append(Series("full model", [float(first["full_model_ms"])], [float(full["value"].iloc[0])],
                                       "mark"))
        for label, latency, value in marks:
            panel.series.append(Series(label, [latency], [value], "mark"))
        panel.ylim = focus_range([v for s in panel.series if s.style in ("line", "mark") for v in s.y], minimize,
                                 panel.ylog)
        if panel.ylim:
            clip(panel)
        full_ms = float(first["full_model_ms"])
        panel.vlines = [(f"{r:.0%} target ({r * full_ms:.1f} ms)", r * full_ms) for r in target_ratios]
        panels.append(panel)
    proxies = sorted({str(read_pareto_csv(p).iloc[0]["proxy"]) for p in files})
    return Figure(f"{' / '.join(proxies)} vs predicted latency", panels)


def focus_range(values: list[float], minimize: bool, log: bool) -> tuple[float, float] | None:
    """The y-range around the values that matter, 1.5x their span beyond the worst (a factor 4 on a log axis)."""
    values = [v for v in values if v == v]
    if not values:
        return None
    low, high = min(values), max(values)
    if log and low > 0:
        return (low / 1.5, high * 4) if minimize else (low / 4, high * 1.5)
    span = (high - low) or abs(high) or 1.0
    return (low - 0.1 * span, high + 1.5 * span) if minimize else (low - 1.5 * span, high + 0.1 * span)


def clip(panel: Panel) -> None:
    """Move points outside the panel's y-range onto its edge and note their real value."""
    low, high = panel.ylim
    for series in panel.series:
        notes = []
        for i, y in enumerate(series.y):
            if y > high or y < low:
                notes.append(f"{y:.3g}")
                series.y[i] = high if y > high else low
            else:
                notes.append("")
        series.notes = notes if any(notes) and series.style != "faint" else []   # background trials: no labels


MAX_COLUMNS = 4          # wider figures wrap into rows, so a page or a screen can still show them


def render(figure: Figure, out_stem: Path) -> list[Path]:
    """Draw a Figure to OUT.png and OUT.svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(figure.panels), MAX_COLUMNS)
    rows = -(-len(figure.panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(figure.panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, figure.panels):
        for series in panel.series:
            if series.style == "faint":
                ax.plot(series.x, series.y, ".", color="0.7", label=series.label, markersize=4)
            elif series.style == "mark":
                ax.plot(series.x, series.y, "*", label=series.label, markersize=13, markeredgecolor="k")
            else:
                ax.plot(series.x, series.y, "o-" if series.style == "line" else "o", label=series.label,
                        markersize=4, alpha=0.85)
            for x, y, note in zip(series.x, series.y, series.notes):
                if note:
                    ax.annotate(note, (x, y), fontsize=6, rotation=90, va="top", ha="center", color="0.35")
        for label, x in panel.vlines:
            ax.axvline(x, color="0.4", linestyle=":", linewidth=0.9)
            ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                        va="top", ha="right")
        if panel.ylog:
            ax.set_yscale("log")
        if panel.ylim:
            ax.set_ylim(*panel.ylim)
        if panel.diagonal and panel.series:
            values = [v for s in panel.series for v in s.x + s.y]
            low, high = min(values), max(values)
            ax.plot([low, high], [low, high], "k--", linewidth=0.8, label="y = x")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(figure.title)
    fig.tight_layout()
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
    plt.close(fig)
    return paths


def plotly_modules():
    """plotly's figure and subplot modules, or one line on how to install them (checked before any work)."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise UserError("--html needs plotly: pip install 'amoeba-search[html]' (or pip install plotly)") from None
    return go, make_subplots


def render_html(figure: Figure, path: Path) -> Path:
    """Draw a Figure as one self-contained interactive page (plotly.js inlined: it opens offline): zoom and pan,
    and every point names its subnet and its real value on hover (clipped points sit on the edge as in the PNG)."""
    go, make_subplots = plotly_modules()
    columns = min(len(figure.panels), MAX_COLUMNS)
    rows = -(-len(figure.panels) // columns)
    page = make_subplots(rows=rows, cols=columns, subplot_titles=[p.title.replace("\n", "<br>") for p in figure.panels])
    symbols = {"faint": ("markers", "circle", 5), "points": ("markers", "circle", 7), "line": ("lines+markers",
                                                                                             "circle", 7),
               "mark": ("markers", "star", 16)}
    for index, panel in enumerate(figure.panels):
        row, col = index // columns + 1, index % columns + 1
        for series in panel.series:
            mode, symbol, size = symbols[series.style]
            real = [note or f"{y:.4g}" for y, note in zip(series.y, series.notes or [""] * len(series.y))]
            names = series.labels or [series.label] * len(series.x)
            page.add_trace(go.Scatter(
                x=series.x, y=series.y, mode=mode, name=series.label, legendgroup=series.label,
                showlegend=index == 0, marker={"symbol": symbol, "size": size,
                                               **({"color": "lightgray"} if series.style == "faint" else {})},
                text=[f"{series.label}<br>{name}<br>{panel.xlabel}: {x:.3f}<br>{panel.ylabel.splitlines()[0]}: {value}"
                      for name, x, value in zip(names, series.x, real)], hoverinfo="text"), row=row, col=col)
        for label, x in panel.vlines:
            page.add_vline(x=x, line_dash="dot", line_color="gray", annotation_text=label,
                           annotation_textangle=-90, row=row, col=col)
        page.update_xaxes(title_text=panel.xlabel, row=row, col=col)
        yaxis = {"title_text": panel.ylabel.replace("\n", "<br>"), "type": "log" if panel.ylog else "linear"}
        if panel.ylim:
            low, high = panel.ylim
            yaxis["range"] = [math.log10(low), math.log10(high)] if panel.ylog else [low, high]
        page.update_yaxes(row=row, col=col, **yaxis)
    page.update_layout(title_text=figure.title, height=480 * rows, width=max(700, 560 * columns),
                       hovermode="closest")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    page.write_html(tmp, include_plotlyjs=True, full_html=True)
    tmp.replace(path)
    return path
