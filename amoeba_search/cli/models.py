"""`amoeba info` and `amoeba subnet`: what a model is made of, and a subnet of it as a validated file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import (ModelOption, check_output, check_range, console, example, load, new_app, setup,
                     strategy_path)
from ..errors import UserError

app = new_app("")


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'0-16,27-29' -> [0..16, 27, 28, 29]; ranges are inclusive."""
    layers: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                layers.extend(range(low, high + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise UserError(f"--keep: {part!r} is not a layer index or range like 0-16 (layers are 0..{num_layers - 1})")
    return layers


@app.command(epilog=example("amoeba info", "amoeba info --model path/to/hf-checkpoint"))
def info(model: str = ModelOption) -> None:
    """Show a model's shape, parameter count, fingerprint and the widths a subnet may use."""
    setup(None)
    from ..families.base import model_dims

    loaded = load(model)
    dims = model_dims(loaded.model.config)
    table = Table(show_header=False)
    for key, value in [("path", loaded.path), ("fingerprint", loaded.fingerprint),
                       ("layers", dims.num_layers), ("hidden", dims.hidden_size),
                       ("heads / kv heads / head_dim", f"{dims.num_heads} / {dims.num_kv_heads} / {dims.head_dim}"),
                       ("valid head counts", dims.head_counts()), ("mlp channels", dims.intermediate_size),
                       ("parameters (M)", f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f}")]:
        table.add_row(key, str(value))
    console.print(table)


@app.command(epilog=example(
    "amoeba subnet --strategy default --layers 20 --heads 6 --mlp 0.75 --out s.json",
    "amoeba subnet --keep 0-9,20-29 --out depth20.json",
    "amoeba subnet --heads 6 --mlp 1152 --out w75.json"))
def subnet(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the subnet JSON."),
    model: str = ModelOption,
    strategy: Optional[Path] = typer.Option(None, help="Strategy JSON from `amoeba select` ('default': the shipped "
                                                       "one); use with --layers."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Depth to take from --strategy (kept layer count)."),
    keep: Optional[str] = typer.Option(None, help="Kept layers, e.g. '0-16,27-29' (inclusive ranges)."),
    num_layers: Optional[int] = typer.Option(None, "--num-layers", help="Keep the first N layers (drop-last-k)."),
    heads: Optional[int] = typer.Option(None, help="Query heads per layer (whole KV groups or equal per group)."),
    mlp: Optional[float] = typer.Option(None, "--mlp", "--width",
                                        help="MLP width: a ratio in (0, 1] (e.g. 0.75; 1 = full) or a whole "
                                             "channel count > 1 (e.g. 1152)."),
    allocation: str = typer.Option("uniform", help="With a strategy: 'uniform' (same width per layer, extractable) "
                                                    "or 'adaptive' (FLAP global ranking; in-place view only)."),
    compensate: bool = typer.Option(True, help="With a strategy: FLAP bias compensation for removed heads/channels."),
) -> None:
    """Write a subnet spec (layers + heads + MLP channels) as validated JSON; with --strategy, the most important."""
    setup(None)
    from ..subnet import Subnet
    from ..families.base import model_dims

    if sum(x is not None for x in (keep, num_layers, strategy)) > 1:
        raise UserError("give one of --keep, --num-layers or --strategy (with --layers)")
    if (strategy is None) != (layers is None):
        raise UserError("--strategy and --layers go together: --strategy s.json --layers 20")
    check_range("--mlp", mlp, 0, low_open=True)
    if mlp is not None and mlp > 1 and mlp != int(mlp):
        raise UserError(f"--mlp {mlp}: give a ratio in (0, 1] (e.g. 0.75) or a whole channel count (e.g. 1152)")
    check_output(out)
    loaded = load(model)
    dims = model_dims(loaded.model.config)
    if num_layers is not None and not 1 <= num_layers <= dims.num_layers:
        raise UserError(f"--num-layers must be in 1..{dims.num_layers}, got {num_layers}")
    width = None if mlp is None else (int(mlp) if mlp > 1 else float(mlp))
    chosen = None
    if strategy is not None:
        from ..selection.strategy import Strategy

        chosen = Strategy.load(strategy_path(strategy))
        chosen.check_model(loaded.fingerprint)
        kept = chosen.layers_for(layers)
    elif keep is not None:
        kept = parse_layers(keep, dims.num_layers)
    else:
        kept = list(range(num_layers if num_layers is not None else dims.num_layers))
    if chosen is not None and chosen.width is not None:
        from ..selection.width import width_subnet

        spec = width_subnet(loaded.model, chosen.width, kept, heads=heads, mlp=width, allocation=allocation,
                            compensate=compensate)
    else:
        spec = Subnet.uniform(dims, kept, heads=heads, mlp=width)
    spec.save(out, loaded.fingerprint)
    console.print(f"wrote {out}: {spec.summary(dims)}")
