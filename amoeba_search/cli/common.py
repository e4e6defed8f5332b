"""What every command module shares: the consoles, process setup, model loading with a spinner, the profile store,
and the options that mean the same everywhere. Command modules import this and nothing else of the CLI."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from ..errors import UserError
from ..profiling.store import PROFILES_ENV, ProfileStore
from ..resources import shipped_strategy
from ..runtime import configure as setup  # noqa: F401  (re-exported for the commands: threads, quiet logs)

# Piped output (make, CI logs) would otherwise be squeezed into 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True)


def new_app(help_text: str, **kwargs) -> typer.Typer:
    """A typer app with our conventions: markdown help (so '[measured]' is text, examples keep their lines)."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown",
                       help=help_text, **kwargs)


def example(*commands: str) -> str:
    """The epilog of a command: runnable examples, one per line."""
    return "**Examples**\n\n```\n" + "\n".join(commands) + "\n```"


def load(model: str, adapters: Path | None = None, dtype: str = "auto"):
    """The model (and its fine-tuned adapters), with a spinner: the first load of the default converts its GGUF."""
    from ..finetune.checkpoint import load_model_and_adapters

    with console.status(f"loading model {model!r} (the first load of the default converts its GGUF once, ~20 s)"):
        return load_model_and_adapters(model, adapters, dtype)


def store(profiles_dir: Path | None) -> ProfileStore:
    return ProfileStore(profiles_dir)


def strategy_path(value: Path, blocks: bool = False) -> Path:
    """'default' is the strategy shipped for the embedded model (DP depths + FLAP widths; with `blocks`, the copy
    that also holds the block scores heterogeneous search needs)."""
    return shipped_strategy(blocks=blocks) if str(value) == "default" else value


def parse_list(text: str, kind: type, what: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a comma-separated list of {kind.__name__}s") from None


def check_range(name: str, value: float | None, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """One-line refusal of a numeric option outside its range (NaN included), before any work starts."""
    if value is None:
        return
    bad = math.isnan(value) or math.isinf(value) or (low is not None and (value <= low if low_open else value < low)) \
        or (high is not None and value > high)
    if bad:
        bounds = f"{'>' if low_open else '>='} {low}" if high is None else f"in {'(' if low_open else '['}{low}, {high}]"
        raise UserError(f"{name} must be {bounds}, got {value}")


def check_output(path: Path | None, directory: bool = False) -> None:
    """Fail before the work if an output cannot be written: its parent is a file, or not writable."""
    if path is None:
        return
    too_long = [part for part in Path(path).parts if len(part.encode()) > 255]
    if too_long:
        raise UserError(f"cannot write {str(path)[:80]}...: a name in it is longer than 255 bytes; choose a shorter one")
    if directory and Path(path).is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"cannot write into {path}: it is not writable; choose another output path")
        return
    if Path(path).exists() and not Path(path).is_dir() and directory:
        raise UserError(f"cannot write {path}: it is a file, not a directory")
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {parent} is not writable; choose another output path")
    if Path(path).is_dir() and not directory:
        raise UserError(f"cannot write {path}: it is a directory; give a file name")


ModelOption = typer.Option("default", "--model", "-m", help="'default' (the embedded SmolLM2-135M-Instruct) or a "
                                                            "local Hugging Face checkpoint directory.")
ThreadsOption = typer.Option(None, "--threads", help="torch CPU threads, pinned and recorded in results "
                                                     "(default: torch's choice).")
DataDirOption = typer.Option(None, "--data-dir", help="Data root (default: $AMOEBA_DATA_DIR, else ../shared/data).")
ProfilesOption = typer.Option(None, "--profiles-dir", help=f"Profile root written to and searched first (default: "
                                                           f"${PROFILES_ENV}, else the shipped device_profiles/; "
                                                           "shipped profiles are always found).")
DtypeOption = typer.Option("auto", "--dtype", help="Load the model in auto (the checkpoint's own dtype: bf16 stays "
                                                   "bf16), float32, bfloat16 or float16.")
AdaptersOption = typer.Option(None, "--adapters", help="Fine-tuned SMoL adapters dir (`amoeba finetune --out DIR`): "
                                                       "the subnet runs with its shape-gated LoRA update.")
StrategyOption = typer.Option(Path("default"), "--strategy", help="Strategy JSON from `amoeba select` (DP depths + "
                                                                  "width scores); 'default' = the one shipped for "
                                                                  "the embedded model.")
