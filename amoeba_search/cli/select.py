"""`amoeba select`: which layers to drop for every depth, and how important every head and channel is."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import (DataDirOption, DtypeOption, ModelOption, StrategyOption, ThreadsOption, check_output,
                     check_range, console, example, load, new_app, parse_list, setup, strategy_path)
from ..errors import UserError
from ..profiling.profile import DEFAULT_MLP_RATIOS
from ..selection import DEPTH_SELECTORS, WIDTH_SCORERS
from ..subnet import ModelDims

app = new_app("")


@app.command(epilog=example("amoeba select --method dp --out strategy.json",
                            "amoeba select --method shortgpt --max-removed 10 --width-method none --out sg.json"))
def select(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the strategy JSON."),
    model: str = ModelOption,
    method: str = typer.Option("dp", help=f"Depth selector: {DEPTH_SELECTORS.choices()} (dp: AmoebaLLM's dynamic "
                                          "programming on calibration loss)."),
    metric: str = typer.Option("ppl", help="Depth calibration: 'ppl' (next-token loss on --calib-file) or 'mmlu' "
                                           "(accuracy on random MMLU validation questions, as the paper)."),
    max_removed: int = typer.Option(15, "--max-removed", help="Compute every depth from N down to N - this."),
    samples: int = typer.Option(16, help="Calibration windows (ppl; also used for width importance)."),
    mmlu_samples: int = typer.Option(40, "--mmlu-samples", help="Calibration questions for --metric mmlu."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per calibration window."),
    seed: int = typer.Option(0, help="Seed for drawing calibration windows (and the random baseline)."),
    calib_file: Optional[Path] = typer.Option(None, "--calib-file", help="Calibration text (default: WikiText-2 "
                                                                        "valid split under the data root)."),
    keep_first: int = typer.Option(0, "--keep-first", help="Never remove the first k layers."),
    keep_last: int = typer.Option(1, "--keep-last", help="Never remove the last k layers (AmoebaLLM keeps 1)."),
    width_method: str = typer.Option("flap", "--width-method", help=f"Head/channel importance: "
                                                                    f"{WIDTH_SCORERS.choices()}, or none."),
    cache: Optional[Path] = typer.Option(None, help="DP state cache (default: OUT.cache.jsonl); reruns resume from it."),
    dtype: str = DtypeOption,
    data_dir: Optional[Path] = DataDirOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Choose the layers to drop for every depth and rank heads/channels, on calibration data -> strategy JSON."""
    setup(threads)
    from ..data import data_root, read_mmlu, read_text
    from ..selection.calibration import multiple_choice_calibration, text_calibration
    from ..selection.select import select_depth

    DEPTH_SELECTORS.get(method)
    if metric not in ("ppl", "mmlu"):
        raise UserError(f"--metric {metric!r}: choose ppl or mmlu")
    if min(keep_first, keep_last, samples, mmlu_samples) < 0 or samples == 0 or seq_len < 2:
        raise UserError("--keep-first/--keep-last must be >= 0, --samples/--mmlu-samples >= 1, --seq-len >= 2")
    if width_method != "none":
        WIDTH_SCORERS.get(width_method)
    from ..models import torch_dtype

    torch_dtype(dtype)                         # before the data lookup: option values first
    cache_path = cache or out.with_name(out.name + ".cache.jsonl")
    check_output(out)
    check_output(cache_path)
    root = data_root(data_dir) if calib_file is None or metric == "mmlu" else None
    text_path = calib_file or root / "wikitext2" / "valid.txt"
    loaded = load(model, dtype=dtype)
    text = text_calibration(loaded.tokenizer, read_text(Path(text_path)), samples, seq_len, seed, name=str(text_path))
    calibration = text if metric == "ppl" else multiple_choice_calibration(
        loaded.tokenizer, read_mmlu(root / "mmlu" / "zero_shot_val.jsonl"), mmlu_samples, seed,
        name="mmlu/zero_shot_val.jsonl")
    result = select_depth(loaded, calibration, method, max_removed, keep_first, keep_last,
                          cache_path=cache_path if method == "dp" else None, seed=seed,
                          width_method=None if width_method == "none" else width_method, width_calibration=text)
    result.save(out)
    table = Table(title=f"{method}: layers kept per depth ({result.depth.evaluations} evaluations, "
                        f"{result.depth.seconds:.0f} s)")
    score_column = "calibration ppl" if metric == "ppl" else "calibration acc % (~)"
    for column in ("layers", "removed layers", score_column):
        table.add_column(column)
    for row in result.depth.rows:
        removed = sorted(set(range(row.num_layers + row.removed)) - set(row.layers))
        loss = row.calibration_loss
        shown = "" if loss is None else f"{math.exp(loss):.2f}" if metric == "ppl" else f"{-100 * loss:.1f}"
        table.add_row(str(row.num_layers), ",".join(map(str, removed)) or "-", shown)
    console.print(table)
    console.print(f"wrote {out}; make a subnet with `amoeba subnet --strategy {out} --layers N --out s.json`")


@app.command(epilog=example("amoeba blocks --strategy default --out strategy-blocks.json",
                            "amoeba search --space heterogeneous --strategy strategy-blocks.json --device amd-epyc "
                            "--flow llama.cpp --target-ratio 0.65"))
def blocks(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the strategy with its block scores."),
    strategy: Path = StrategyOption,
    model: str = ModelOption,
    samples: int = typer.Option(8, help="Calibration windows."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per calibration window."),
    seed: int = typer.Option(0, help="Seed for drawing calibration windows."),
    calib_file: Optional[Path] = typer.Option(None, "--calib-file", help="Calibration text (default: WikiText-2 "
                                                                        "valid split under the data root)."),
    mlp_ratios: str = typer.Option(",".join(map(str, DEFAULT_MLP_RATIOS)), "--mlp-ratios",
                                   help="MLP widths offered per layer, as shares of the full width (the widths "
                                        "`amoeba profile` measures by default)."),
    heads: Optional[str] = typer.Option(None, help="Query-head counts offered per layer, e.g. 3,6,9 (default: every "
                                                   "GQA-valid count, as `amoeba profile`)."),
    compensate: bool = typer.Option(True, help="FLAP bias compensation in the narrowed variants (as the search)."),
    mlp_only_layers: bool = typer.Option(True, "--mlp-only-layers/--no-mlp-only-layers",
                                         help="Also offer attention-free (MLP-only) layers at every MLP width."),
    log: Optional[Path] = typer.Option(None, help="Result log (default: OUT.blocks.jsonl); reruns resume from it."),
    dtype: str = DtypeOption,
    data_dir: Optional[Path] = DataDirOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Replace-one-block scores for heterogeneous search: every layer x (removed | heads x MLP width) -> KL to the
    full model and loss increase on calibration text, added to the strategy file."""
    setup(threads)
    from ..data import data_root, read_text
    from ..selection.blocks import score_blocks
    from ..selection.calibration import text_calibration
    from ..selection.strategy import Strategy
    from ..subnet import mlp_channel_count

    if samples < 1 or seq_len < 2:
        raise UserError("--samples must be >= 1 and --seq-len >= 2")
    ratios = parse_list(mlp_ratios, float, "--mlp-ratios")
    head_counts = parse_list(heads, int, "--heads") if heads else None
    for ratio in ratios:
        check_range("--mlp-ratios", ratio, 0, 1, low_open=True)
    log_path = log or out.with_name(out.name + ".blocks.jsonl")
    check_output(out)
    check_output(log_path)
    source = strategy_path(strategy)
    chosen = Strategy.load(source)
    text_path = calib_file or data_root(data_dir) / "wikitext2" / "valid.txt"
    loaded = load(model, dtype=dtype)
    chosen.check_model(loaded.fingerprint)
    dims = ModelDims.from_config(loaded.model.config)
    widths = sorted({mlp_channel_count(dims, r) for r in ratios})
    calibration = text_calibration(loaded.tokenizer, read_text(Path(text_path)), samples, seq_len, seed,
                                   name=str(text_path))
    chosen.blocks = score_blocks(loaded, chosen, calibration, widths, log_path, compensate,
                                 heads=head_counts, mlp_only=mlp_only_layers)
    chosen.save(out)
    worst = sorted((r for r in chosen.blocks.rows if (r["heads"], r["mlp"]) == (0, 0)), key=lambda r: r["kl"])
    console.print(f"{len(chosen.blocks.rows)} block scores ({len(chosen.blocks.variants)} variants x "
                  f"{dims.num_layers} layers, {chosen.blocks.seconds:.0f} s); cheapest layers "
                  f"to remove (KL): {', '.join(str(r['layer']) for r in worst[:5])}; wrote {out}")
